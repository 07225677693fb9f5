"""A streamed response for scripted upstreams that notices when its client goes away."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tests.support.scripted_anthropic import Seen


class WatchedStream(Response):
    """Streams ``content`` with ``headers``, recording the bytes sent and the disconnect in
    ``seen`` (so tests can check that cancellation reached the upstream)."""

    def __init__(
        self, seen: Seen, content: AsyncIterator[bytes], headers: Sequence[tuple[bytes, bytes]]
    ):
        self._seen = seen
        self._content = content
        self._start_headers = list(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self._seen.disconnected = time.monotonic()
            tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await send(
                {"type": "http.response.start", "status": 200, "headers": self._start_headers}
            )
            async for piece in self._content:
                self._seen.sent += piece
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            tg.cancel_scope.cancel()
