"""The app factory: all wiring happens here and in the lifespan, nothing at import."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import ASGIApp

from proxy.api import chat, health, models
from proxy.api.context import Services
from proxy.api.middleware import RequestContextMiddleware
from proxy.api.responses import handle_http_exception, handle_proxy_error, handle_unexpected
from proxy.auth import Authenticator
from proxy.errors import ProxyError
from proxy.metrics import Metrics
from proxy.relay.upstream import Upstreams
from proxy.settings import Settings
from proxy.store import Store, open_store

logger = logging.getLogger("proxy")


class ProxyApp(Starlette):
    """Starlette with the request-context middleware outside everything else.

    It must wrap even the 500 handler so that every response carries
    ``x-request-id`` and is counted.
    """

    def __init__(self, *, metrics: Metrics, settings: Settings, **kwargs: object):
        self._metrics = metrics
        self._settings = settings
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def build_middleware_stack(self) -> ASGIApp:
        return RequestContextMiddleware(
            super().build_middleware_stack(),
            self._metrics,
            body_limit=lambda path: self._settings.max_body_bytes,
        )


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """Build the ASGI app. ``store`` and ``upstream_transport`` are injectable for tests."""
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Services]]:
        the_store = store or open_store(settings.database)
        await the_store.migrate()
        upstreams = Upstreams(settings, transport=upstream_transport)
        services = Services(
            settings=settings,
            store=the_store,
            authenticator=Authenticator(the_store, cache_seconds=settings.auth_cache_seconds),
            upstreams=upstreams,
            metrics=metrics,
        )
        try:
            yield {"services": services}
        finally:
            await upstreams.aclose()
            await the_store.close()

    routes = [
        Route("/v1/chat/completions", chat.chat_completions, methods=["POST"]),
        Route("/v1/models", models.list_models, methods=["GET"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", health.metrics, methods=["GET"]),
    ]
    return ProxyApp(
        metrics=metrics,
        settings=settings,
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ProxyError: handle_proxy_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
    )
