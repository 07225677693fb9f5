"""Reading the proxy's own event streams (``GET …/events``) as a client does."""

from __future__ import annotations

from collections.abc import Iterator

import httpx


def server_sent_events(response: httpx.Response) -> Iterator[dict[str, str]]:
    """The events of an SSE response as they arrive, each its fields by name; comments (pings)
    are skipped."""
    current: dict[str, str] = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            continue
        if not line:
            if current:
                yield current
            current = {}
            continue
        field, _, value = line.partition(":")
        current[field] = value.removeprefix(" ")


def sse_events(response: httpx.Response) -> list[dict[str, str]]:
    """Every event until the stream's ``end`` event (included)."""
    events: list[dict[str, str]] = []
    for event in server_sent_events(response):
        events.append(event)
        if event.get("event") == "end":
            break
    return events
