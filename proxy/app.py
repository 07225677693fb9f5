"""The app factory: all wiring happens here and in the lifespan, nothing at import."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import anyio
import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

from proxy.api import (
    chat,
    collections,
    files,
    health,
    limits,
    models,
    openapi,
    snapshots,
    storage,
    trajectories,
    trajectory_events,
)
from proxy.api.context import Services
from proxy.api.middleware import DirectRoute, RequestContextMiddleware
from proxy.api.origin import Origins
from proxy.api.recording import ChatRecorder, FirstBytes
from proxy.api.responses import (
    handle_client_disconnect,
    handle_http_exception,
    handle_proxy_error,
    handle_store_fault,
    handle_unexpected,
)
from proxy.api.uploads import UPLOAD_PATHS, upload_body_limit
from proxy.auth import Authenticator
from proxy.browsers import BrowserGuard
from proxy.errors import ProxyError
from proxy.links import SIGNED_PREFIX, LinkRejected, LinkSigner
from proxy.metrics import Metrics
from proxy.prices import PriceBook
from proxy.quota import QuotaConfig, Quotas
from proxy.relay.upstream import Upstreams
from proxy.runs.runtime import run_service
from proxy.sandbox import SandboxBackend
from proxy.settings import Settings
from proxy.store import Store, open_store
from proxy.store.blobs import open_blob_store
from proxy.store.chat import record_chats
from proxy.store.crypto import SecretBox, load_or_create_key
from proxy.store.faults import TRANSIENT_FAULTS, StorageFull, StoreUnavailable
from proxy.web.pages import Pages

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
        app: ASGIApp = RequestContextMiddleware(
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
        if self._settings.allowed_origins:
            # Outermost: preflights are answered before anything else sees them.
            app = CORSMiddleware(
                app,
                allow_origins=self._settings.allowed_origins,
                allow_methods=["*"],
                allow_headers=["*"],
                expose_headers=["x-request-id", "x-jetty-trajectory-id"],
            )
        return app


def browser_guard(settings: Settings) -> BrowserGuard:
    """What web pages may send to this server while it has no keys (see proxy.browsers)."""
    hosts = list(settings.allowed_hosts)
    if settings.public_base_url:
        hosts.append(urlsplit(settings.public_base_url).hostname or "")
    return BrowserGuard(
        allowed_origins=settings.allowed_origins,
        allowed_hosts=hosts,
        # On other binds the names the server is reached by are not known.
        check_host=settings.is_loopback,
    )


@contextlib.asynccontextmanager
async def listening(store: Store) -> AsyncIterator[None]:
    """Run `Store.listen` for the duration of the block."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.listen, name="store-listen")
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


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
        configured_key = settings.secret_key.get_secret_value() if settings.secret_key else None
        secret_keys = load_or_create_key(configured_key, settings.data_dir)
        the_store = store or open_store(
            settings.database,
            secret_box=SecretBox(secret_keys),
            timeout=settings.database_timeout,
        )
        await the_store.migrate()
        # Fixed now: a server started with keys (or that may not serve a local user) stays
        # authenticated whatever happens to its keys later.
        authenticator = Authenticator(
            the_store,
            cache_seconds=settings.auth_cache_seconds,
            keys_required=await the_store.has_keys() or not settings.local_user_allowed,
            grace_seconds=settings.auth_grace_seconds,
            browser_guard=browser_guard(settings),
        )
        upstreams = Upstreams(settings, transport=upstream_transport)
        recorder = ChatRecorder(
            functools.partial(record_chats, the_store),
            first_bytes,
            retry_on=TRANSIENT_FAULTS,
            backlog_bytes=settings.chat_record_backlog_bytes,
            on_drop=lambda reason, count: metrics.chat_records_dropped.labels(reason).inc(count),
        )
        metrics.chat_records_retrying.set_function(lambda: recorder.retrying)
        links = LinkSigner(secret_keys, lifetime_seconds=settings.link_lifetime_seconds)
        prices = PriceBook(settings.prices)
        await anyio.to_thread.run_sync(prices.load)
        quotas = Quotas(
            the_store,
            QuotaConfig(
                settings.default_limits, settings.collections, settings.limits_sync_seconds
            ),
        )
        metrics.watch_collections(quotas)
        try:
            async with (
                # Outermost: the spend of the last runs and records is written at its end.
                quotas.running(),
                # Other servers' changes wake this one's followers and runs (PostgreSQL).
                listening(the_store),
                run_service(
                    settings,
                    the_store,
                    blobs,
                    links=links,
                    prices=prices,
                    quotas=quotas,
                    backend=sandbox_backend,
                    relay_transport=relay_transport,
                ) as runs,
                # Records still queued are written before the store closes.
                recorder.running(),
            ):
                metrics.watch_pools(runs.pool_stats)
                yield {
                    "services": Services(
                        settings=settings,
                        store=the_store,
                        authenticator=authenticator,
                        upstreams=upstreams,
                        metrics=metrics,
                        blobs=blobs,
                        runs=runs,
                        recorder=recorder,
                        links=links,
                        origins=Origins(settings.public_base_url, settings.forwarded_allow_ips),
                        prices=prices,
                        quotas=quotas,
                    )
                }
        finally:
            await upstreams.aclose()
            await the_store.close()

    chat_route = Route("/v1/chat/completions", chat.chat_completions, methods=["POST"])
    pages = Pages()
    run_path = "/api/v1/trajectory/{collection}/{task}/{trajectory_id}"
    # What a signed link opens without a key: the GET routes of one run (see proxy/links.py).
    signed = Mount(
        f"{SIGNED_PREFIX}/{{token}}",
        routes=[
            *pages.signed_routes(),
            Route(f"{run_path}/download", trajectories.download_results, methods=["GET"]),
            Route(
                f"{run_path}/artifacts/{{path:path}}",
                trajectories.download_artifact,
                methods=["GET"],
            ),
            Route(f"{run_path}/events", trajectory_events.stream_events, methods=["GET"]),
        ],
    )

    async def link_rejected(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LinkRejected)
        return pages.error(request, exc)

    routes: list[BaseRoute] = [
        chat_route,
        Route("/v1/models", models.list_models, methods=["GET"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", health.metrics, methods=["GET"]),
        Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
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
        Route("/api/v1/collections/{collection}/limits", limits.get_limits, methods=["GET"]),
        Route("/api/v1/collections/{collection}/limits", limits.patch_limits, methods=["PATCH"]),
        *pages.routes(),
        signed,
    ]
    return ProxyApp(
        metrics=metrics,
        settings=settings,
        first_bytes=first_bytes,
        direct=chat_route,
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            LinkRejected: link_rejected,
            ProxyError: handle_proxy_error,
            ClientDisconnect: handle_client_disconnect,
            StoreUnavailable: handle_store_fault,
            StorageFull: handle_store_fault,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
    )
