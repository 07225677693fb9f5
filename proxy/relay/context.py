"""What a provider relay's routes get from the relay app, and the helpers they share."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import httpx
from starlette.requests import Request

from proxy.relay.tokens import Credential, ModelUsage, RunGrant, RunTokens
from proxy.settings import Settings

logger = logging.getLogger("proxy.relay")

OnUsage = Callable[[str, ModelUsage], Awaitable[None]]
Headers = list[tuple[str, str]]
# Request extension marking the requests to send through the egress guard.
GUARDED = "jetty_proxy.guarded"


@dataclass(frozen=True)
class RelayContext:
    """Built in the relay app's lifespan and handed to routes through ``request.state.relay``.

    ``client`` is one pooled HTTP client shared by every provider relay; ``guarded_client``
    sends the requests to base URLs a client gave (a collection's secrets), which must not
    reach the server's internal networks (see :meth:`client_for`).
    """

    tokens: RunTokens
    settings: Settings
    client: httpx.AsyncClient
    on_usage: OnUsage | None = None
    guarded_client: httpx.AsyncClient | None = None

    def build_request(
        self, credential: Credential | None, url: str, *, content: bytes, headers: Headers
    ) -> httpx.Request:
        """A ``POST`` to ``url``, marked for the egress guard when ``credential`` says so."""
        extensions = {GUARDED: True} if credential is not None and credential.guarded else {}
        return self.client.build_request(
            "POST", url, content=content, headers=headers, extensions=extensions
        )

    def client_for(self, request: httpx.Request) -> httpx.AsyncClient:
        """The client that sends ``request``: the guarded one when it is marked for it."""
        if request.extensions.get(GUARDED):
            if self.guarded_client is None:
                raise RuntimeError("a guarded request, and no guarded client")
            return self.guarded_client
        return self.client

    async def report_usage(self, grant: RunGrant, usage: ModelUsage) -> None:
        """Pass one model call's usage to the grant's hook and the app's.

        Runs shielded from cancellation (the agent may have gone away already); a failing
        hook is logged, never raised into the relay.
        """
        with anyio.CancelScope(shield=True):
            if grant.on_usage is not None:
                try:
                    await grant.on_usage(usage)
                except Exception:
                    logger.exception("usage hook of run %s failed", grant.run_id)
            if self.on_usage is not None:
                try:
                    await self.on_usage(grant.run_id, usage)
                except Exception:
                    logger.exception("relay usage callback failed for run %s", grant.run_id)


def relay_context(request: Request) -> RelayContext:
    context = request.state.relay
    assert isinstance(context, RelayContext)
    return context


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None when it is larger than ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
