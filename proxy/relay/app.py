"""The model relay as its own small ASGI app, served on a unix socket mounted into sandboxes
(and on a TCP port for sandboxes that reach it over a network, see `proxy.runs.runtime`).

It exposes the provider relays and two probes, nothing else: no chat completions, no admin.
Each provider relay is a module with a ``routes()`` factory: Anthropic Messages (Claude Code),
the OpenAI Responses API (Codex) and the Gemini API (Gemini CLI)::

    app = create_relay_app(tokens, settings, on_usage=record_usage)
    # uvicorn.run(app, uds=socket_path): the socket is bind-mounted into each sandbox
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from proxy.egress import AddressPolicy, GuardedTransport
from proxy.relay import anthropic, gemini, openai_responses
from proxy.relay.context import OnUsage, RelayContext
from proxy.relay.tokens import RunTokens
from proxy.settings import Settings

logger = logging.getLogger("proxy.relay")

RouteFactory = Callable[[], Sequence[BaseRoute]]

DEFAULT_PROVIDERS: tuple[RouteFactory, ...] = (
    anthropic.routes,
    openai_responses.routes,
    gemini.routes,
)


def create_relay_app(
    tokens: RunTokens,
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    on_usage: OnUsage | None = None,
    providers: Sequence[RouteFactory] = DEFAULT_PROVIDERS,
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """Build the relay app.

    ``tokens`` is the registry the run lifecycle issues run tokens from; ``on_usage`` is awaited
    with ``(run_id, usage)`` once per model call (as is the hook a token was issued with).
    ``transport`` replaces the upstream connection, for tests. ``extra_routes`` are served
    beside the provider relays (a sandbox backend's own, on the network listener).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, RelayContext]]:
        timeout = httpx.Timeout(
            connect=settings.upstream_connect_timeout,
            read=settings.upstream_read_timeout,
            write=settings.upstream_read_timeout,
            pool=settings.upstream_connect_timeout,
        )
        # The body is relayed as received; a compressed one would need re-encoding.
        headers = {"accept-encoding": "identity"}
        client = httpx.AsyncClient(
            transport=transport,
            timeout=timeout,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            headers=headers,
        )
        # Collections' own base URLs: resolved and checked at every connection, and no
        # proxies from the environment (they would connect instead, unchecked).
        guarded = httpx.AsyncClient(
            transport=GuardedTransport(AddressPolicy.from_entries(settings.fetch_allow_hosts)),
            timeout=timeout,
            headers=headers,
            trust_env=False,
        )
        try:
            yield {"relay": RelayContext(tokens, settings, client, on_usage, guarded)}
        finally:
            await client.aclose()
            await guarded.aclose()

    routes: list[BaseRoute] = [
        Route("/", _probe, methods=["GET", "HEAD"]),
        Route("/health", _probe, methods=["GET", "HEAD"]),
    ]
    for factory in providers:
        routes.extend(factory())
    routes.extend(extra_routes)
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_exception, Exception: _unexpected},
    )


async def _probe(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405, in Anthropic's error shape (what the agents understand best)."""
    assert isinstance(exc, HTTPException)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return JSONResponse(
        anthropic.error_body(exc.status_code, message),
        status_code=exc.status_code,
        headers={**(exc.headers or {}), "x-should-retry": "false"},
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(anthropic.error_body(500, "Internal relay error."), status_code=500)
