"""The app factory: all wiring happens here and in the lifespan, nothing at import."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import ASGIApp

from proxy.api import (
    chat,
    collections,
    files,
    health,
    models,
    snapshots,
    storage,
    trajectories,
    trajectory_events,
)
from proxy.api.context import Services
from proxy.api.middleware import DirectRoute, RequestContextMiddleware
from proxy.api.recording import ChatRecorder, FirstBytes
from proxy.api.responses import handle_http_exception, handle_proxy_error, handle_unexpected
from proxy.api.uploads import UPLOAD_PATHS, upload_body_limit
from proxy.auth import Authenticator
from proxy.errors import ProxyError
from proxy.metrics import Metrics
from proxy.relay.upstream import Upstreams
from proxy.runs.runtime import run_service
from proxy.sandbox import SandboxBackend
from proxy.settings import Settings
from proxy.store import Store, open_store
from proxy.store.blobs import open_blob_store
from proxy.store.chat import record_chats
from proxy.store.crypto import SecretBox, load_or_create_key

logger = logging.getLogger("proxy")


class ProxyApp(Starlette):
    """Starlette with the request-context middleware outside everything else.

    It must wrap even the 500 handler so that every response carries
    ``x-request-id`` and is counted. The ``direct`` route (chat completions, the hot
    path) is served right inside it, around Starlette's own router and middleware.
    """

    def __init__(
        self,
        *,
        metrics: Metrics,
        settings: Settings,
        first_bytes: FirstBytes,
        direct: Route,
        **kwargs: object,
    ):
        self._metrics = metrics
        self._settings = settings
        self._first_bytes = first_bytes
        self._direct = direct
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def build_middleware_stack(self) -> ASGIApp:
        return RequestContextMiddleware(
            super().build_middleware_stack(),
            self._metrics,
            body_limit=lambda path: (
                upload_body_limit(self._settings.upload_max_bytes)
                if path in UPLOAD_PATHS
                else self._settings.max_body_bytes
            ),
            first_bytes=self._first_bytes,
            direct=DirectRoute(self._direct, self.exception_handlers, self.router),
        )


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
    sandbox_backend: SandboxBackend | None = None,
    relay_transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """Build the ASGI app. The keyword arguments replace real parts in tests."""
    metrics = Metrics()
    first_bytes = FirstBytes()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Services]]:
        blobs = open_blob_store(settings.blob_store_url)
        secret_key = settings.secret_key.get_secret_value() if settings.secret_key else None
        the_store = store or open_store(
            settings.database,
            secret_box=SecretBox(load_or_create_key(secret_key, settings.data_dir)),
        )
        await the_store.migrate()
        upstreams = Upstreams(settings, transport=upstream_transport)
        recorder = ChatRecorder(functools.partial(record_chats, the_store), first_bytes)
        try:
            async with (
                run_service(
                    settings,
                    the_store,
                    blobs,
                    backend=sandbox_backend,
                    relay_transport=relay_transport,
                ) as runs,
                # Records still queued are written before the store closes.
                recorder.running(),
            ):
                yield {
                    "services": Services(
                        settings=settings,
                        store=the_store,
                        authenticator=Authenticator(
                            the_store, cache_seconds=settings.auth_cache_seconds
                        ),
                        upstreams=upstreams,
                        metrics=metrics,
                        blobs=blobs,
                        runs=runs,
                        recorder=recorder,
                    )
                }
        finally:
            await upstreams.aclose()
            await the_store.close()

    chat_route = Route("/v1/chat/completions", chat.chat_completions, methods=["POST"])
    routes = [
        chat_route,
        Route("/v1/models", models.list_models, methods=["GET"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", health.metrics, methods=["GET"]),
        Route("/v1/files", files.create_file, methods=["POST"]),
        Route("/v1/files", files.list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", files.retrieve_file, methods=["GET"]),
        Route("/v1/files/{file_id}", files.delete_file, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", files.file_content, methods=["GET"]),
        Route("/api/v1/files", files.create_file, methods=["POST"]),
        Route("/api/v1/sandbox/upload", storage.upload, methods=["POST"]),
        Route("/api/v1/file/{storage_path:path}", storage.download, methods=["GET"]),
        Route("/api/v1/list-files", storage.list_files, methods=["GET"]),
        Route("/api/v1/snapshots", snapshots.list_snapshots, methods=["GET"]),
        Route(
            "/api/v1/db/trajectories/{collection}/{task}",
            trajectories.list_trajectories,
            methods=["GET"],
        ),
        Route(
            "/api/v1/db/trajectory/{collection}/{task}/{trajectory_id}",
            trajectories.get_trajectory,
            methods=["GET"],
        ),
        Route(
            "/api/v1/trajectory/{collection}/{task}/statuses",
            trajectories.set_statuses,
            methods=["POST"],
        ),
        Route(
            "/api/v1/trajectory/{collection}/{task}/{trajectory_id}/labels",
            trajectories.set_label,
            methods=["POST"],
        ),
        Route(
            "/api/v1/trajectory/{collection}/{task}/{trajectory_id}/download",
            trajectories.download_results,
            methods=["GET"],
        ),
        Route(
            "/api/v1/trajectory/{collection}/{task}/{trajectory_id}/artifacts/{path:path}",
            trajectories.download_artifact,
            methods=["GET"],
        ),
        Route(
            "/api/v1/trajectory/{collection}/{task}/{trajectory_id}/events",
            trajectory_events.stream_events,
            methods=["GET"],
        ),
        Route(
            "/api/v1/collections/{collection}/environment",
            collections.get_environment,
            methods=["GET"],
        ),
        Route(
            "/api/v1/collections/{collection}/environment",
            collections.patch_environment,
            methods=["PATCH"],
        ),
    ]
    return ProxyApp(
        metrics=metrics,
        settings=settings,
        first_bytes=first_bytes,
        direct=chat_route,
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ProxyError: handle_proxy_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
    )
