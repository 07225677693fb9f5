"""What the provider relays (Anthropic, Responses API, Gemini) share: authenticate, forward,
relay, count.

A provider module turns an agent's request into an upstream request (its own paths, headers and
key) and a usage reader; :func:`relay_call` does the rest the same way for every provider, in
the provider's :class:`~proxy.relay.wire.Wire` format::

    grant = authenticate(context, token, "anthropic")
    body, payload = await read_json(request, MAX_REQUEST_BYTES)
    upstream = context.client.build_request("POST", url, content=body, headers=headers)
    return relay_call(context, Call(grant, upstream, stream, usage), WIRE)

Bodies pass through byte for byte in both directions; only the credentials change.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.errors import BadRequest, PayloadTooLarge, ProxyError, Unauthorized
from proxy.relay.context import RelayContext, read_body
from proxy.relay.response import RelayJSONResponse, RelayOutcome, RelayStreamResponse
from proxy.relay.tokens import ModelUsage, RunGrant, attributed
from proxy.relay.upstream import pending_request
from proxy.relay.wire import Wire

logger = logging.getLogger("proxy.relay")

_EVENT_SPLIT = re.compile(rb"\r?\n\r?\n")


RelayName = Literal["anthropic", "openai", "google"]


class UsageReader(Protocol):
    """Collects one call's usage from the bytes relayed, without altering them."""

    def feed_sse(self, block: bytes) -> None:
        """Read the complete SSE events in ``block``."""
        ...

    def feed_json(self, body: bytes) -> None:
        """Read a whole non-streaming response body."""
        ...

    def result(self, *, complete: bool) -> ModelUsage | None:
        """The usage seen so far, or None when the upstream reported none."""
        ...


@dataclass(frozen=True)
class Call:
    """One authenticated request, ready to go upstream.

    ``usage`` is None for requests that are not model calls (token counting).
    """

    grant: RunGrant
    upstream: httpx.Request
    stream: bool
    usage: UsageReader | None


def authenticate(
    context: RelayContext, token: str | None, relay: RelayName | None = None
) -> RunGrant:
    """The grant of a live run's ``token``; :class:`Unauthorized` for anything else.

    A run whose credentials name its relay (every run the engine starts does) may use that
    relay only: a Claude Code run cannot spend the server's OpenAI key through ``/v1/responses``.
    """
    grant = context.tokens.lookup(token) if token else None
    if grant is None:
        raise Unauthorized("Invalid relay token: unknown, or its run has ended.")
    creds = grant.provider_overrides
    if relay is not None and creds is not None and getattr(creds, relay) is None:
        raise Unauthorized(f"This run's relay token is not valid for the {relay} relay.")
    return grant


async def read_json(request: Request, limit: int) -> tuple[bytes, dict[str, Any]]:
    """The request body, unchanged, and its parse (which must be a JSON object)."""
    body = await read_body(request, limit)
    if body is None:
        raise PayloadTooLarge(f"Request body exceeds {limit} bytes.")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise BadRequest("Request body must be a JSON object.")
    return body, payload


def forwarded_headers(request: Request, names: Sequence[str]) -> list[tuple[str, str]]:
    """The request headers in ``names`` (all their values); the rest stays in the relay."""
    headers = [(name, value) for name in names for value in request.headers.getlist(name)]
    if "content-type" not in request.headers:
        headers.append(("content-type", "application/json"))  # the body parsed as JSON
    return headers


def error_response(exc: ProxyError, wire: Wire) -> Response:
    """``exc`` as a response in the wire's error shape, for a request refused before relaying."""
    return JSONResponse(
        wire.dialect.error_body(exc), status_code=exc.status_code, headers=exc.headers()
    )


def relay_call(context: RelayContext, call: Call, wire: Wire) -> Response:
    """Relay ``call``: the upstream's answer goes back as it arrives, usage is reported after.

    Usage is reported once the call has ended, also when it ended early (then marked
    incomplete), through the grant's hook and the relay app's.
    """
    pending = pending_request(context.client_for(call.upstream), call.upstream, wire)

    async def on_finish(outcome: RelayOutcome) -> None:
        completed = outcome.status == "completed"
        logger.debug(
            "%s call for run %s: %s %s in %.2fs",
            wire.name,
            call.grant.run_id,
            outcome.status,
            outcome.status_code,
            outcome.duration_seconds,
        )
        if call.usage is None:
            return
        if not call.stream and completed:
            call.usage.feed_json(outcome.head)
        found = call.usage.result(complete=completed)
        if found is not None:
            await context.report_usage(call.grant, attributed(call.grant, found))

    if call.stream:
        return RelayStreamResponse(
            pending.open,
            keepalive=context.settings.keepalive_seconds,
            on_finish=on_finish,
            dialect=wire.dialect,
            on_block=call.usage.feed_sse if call.usage is not None else None,
        )
    return RelayJSONResponse(pending.open, on_finish=on_finish, dialect=wire.dialect)


def sse_events(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Each SSE event in ``block`` as its name and its data lines joined (empty when absent)."""
    for event in _EVENT_SPLIT.split(block):
        name = b""
        data: list[bytes] = []
        for line in event.splitlines():
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"event":
                name = value
            elif field == b"data":
                data.append(value)
        if name or data:
            yield name, b"\n".join(data)


def json_object(raw: bytes) -> dict[str, Any] | None:
    """``raw`` parsed, when it is a JSON object; None for anything else."""
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def count(value: object) -> int:
    """A token count from a usage field: a non-negative int, anything else counts as 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(value, 0)


def upstream_message(status_code: int, raw: bytes) -> str:
    """A message for an upstream error body that is not in the provider's shape."""
    text = raw.decode("utf-8", "replace").strip()[:500]
    return f"upstream returned HTTP {status_code}" + (f": {text}" if text else "")
