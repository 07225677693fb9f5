"""One provider's wire format, as far as relaying it goes: a :class:`Wire`.

The relay itself is written once (:mod:`proxy.relay.upstream` opens the upstream,
:mod:`proxy.relay.response` relays its answer); what differs between providers is here: how a
stream ends, the shape of errors, and which upstream response headers the client gets.
:data:`CHAT` is OpenAI's Chat Completions, what ``/v1/chat/completions`` relays; each provider
relay for the agents (:mod:`~proxy.relay.anthropic`, :mod:`~proxy.relay.openai_responses`,
:mod:`~proxy.relay.gemini`) defines its own ``WIRE``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from proxy.errors import ProxyError, UpstreamError, normalise_error_body

DONE = b"data: [DONE]\n\n"
_OPENAI_END = re.compile(rb"^data: ?\[DONE\]\r?$", re.MULTILINE)


class Dialect(Protocol):
    """What differs between providers' streams and error bodies."""

    def is_end(self, block: bytes) -> bool:
        """Whether ``block`` (one or more complete SSE events) holds the stream's last event."""
        ...

    def error_body(self, exc: ProxyError) -> dict[str, Any]:
        """The JSON error body for ``exc`` in the provider's shape."""
        ...

    def in_band_error(self, body: dict[str, Any]) -> bytes:
        """The final bytes that report an error once a stream has started."""
        ...


UpstreamErrorOf = Callable[[int, bytes, dict[str, str]], UpstreamError]
HeaderFilter = Callable[[httpx.Headers], dict[str, str]]


@dataclass(frozen=True)
class Wire:
    """One provider's wire format.

    ``upstream_error`` turns an upstream error status and body into the error passed on (the
    provider's shape kept); ``select_headers`` picks the upstream response headers passed on.
    """

    name: str
    dialect: Dialect
    upstream_error: UpstreamErrorOf
    select_headers: HeaderFilter


class OpenAIDialect:
    """Chat Completions: streams end with ``data: [DONE]``; errors are ``{"error": {...}}``."""

    def is_end(self, block: bytes) -> bool:
        # A line of its own: "[DONE]" inside a chunk's text (a JSON string) is not the end.
        return _OPENAI_END.search(block) is not None

    def error_body(self, exc: ProxyError) -> dict[str, Any]:
        return exc.body()

    def in_band_error(self, body: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(body).encode() + b"\n\n" + DONE


OPENAI = OpenAIDialect()

# Response headers worth passing back to the client from an OpenAI-compatible upstream.
_PASSED_RESPONSE_HEADERS = frozenset(
    {
        "x-should-retry",
        "retry-after",
        "retry-after-ms",
        "openai-processing-ms",
        "x-ratelimit-limit-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
    }
)


def passed_headers(headers: httpx.Headers) -> dict[str, str]:
    """The Chat Completions response headers passed on to the client."""
    # One pass over the headers; items() lower-cases names and joins repeated ones.
    return {name: value for name, value in headers.items() if name in _PASSED_RESPONSE_HEADERS}


def passed_raw_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """:func:`passed_headers` of headers as received, without making an httpx.Headers."""
    passed: dict[str, str] = {}
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1").lower()
        if name in _PASSED_RESPONSE_HEADERS:
            value = raw_value.decode("latin-1")
            passed[name] = f"{passed[name]}, {value}" if name in passed else value
    return passed


def header_filter(names: Iterable[str], prefixes: tuple[str, ...] = ()) -> HeaderFilter:
    """A :data:`HeaderFilter` passing on the headers in ``names`` or starting with ``prefixes``
    (all lower case)."""
    kept = frozenset(names)

    def select(headers: httpx.Headers) -> dict[str, str]:
        return {
            name: value
            for name, value in headers.items()
            if name in kept or name.startswith(prefixes)
        }

    return select


def openai_error(status_code: int, raw: bytes, headers: dict[str, str]) -> UpstreamError:
    """An upstream error in OpenAI's shape, whatever shape its body came in."""
    return UpstreamError(status_code, normalise_error_body(status_code, raw), headers)


CHAT = Wire("openai-chat", OPENAI, openai_error, passed_headers)
