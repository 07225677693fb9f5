"""``GET …/{trajectory_id}/events``: a run's event log as Server-Sent Events.

The stream replays the log from the start (or after ``Last-Event-ID`` / ``?after=``), then
follows the live run, and ends with an ``end`` event once the run is over. Each event's
``id:`` is its ``seq``, so a reconnecting client resumes exactly where it stopped. (The chat
stream must never carry ``id:`` fields; this one is not read by the OpenAI SDKs.)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response

from proxy.api.trajectories import load_trajectory
from proxy.errors import InvalidField
from proxy.store import Store
from proxy.store.follow import follow_events

SEND_TIMEOUT_SECONDS = 30.0


async def stream_events(request: Request) -> Response:
    services, trajectory = await load_trajectory(request)
    after = _resume_point(request)
    store = services.store
    poll = services.settings.events_poll_seconds
    return EventSourceResponse(
        _events(store, trajectory.id, after, poll),
        ping=services.settings.keepalive_seconds,
        send_timeout=SEND_TIMEOUT_SECONDS,
    )


async def _events(
    store: Store, trajectory_id: str, after: int, poll_seconds: float
) -> AsyncIterator[ServerSentEvent]:
    async for event in follow_events(store, trajectory_id, after, poll_seconds=poll_seconds):
        payload = {
            "seq": event.seq,
            "type": event.type,
            "data": event.data,
            "created": event.created_at.isoformat(),
        }
        yield ServerSentEvent(data=json.dumps(payload, ensure_ascii=False), id=str(event.seq))
    final = await store.get_trajectory(trajectory_id)
    status = final.status if final is not None else None
    yield ServerSentEvent(data=json.dumps({"status": status}), event="end")


def _resume_point(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidField("Last-Event-ID", "Last-Event-ID (or 'after') must be an event seq.")
    return int(raw)
