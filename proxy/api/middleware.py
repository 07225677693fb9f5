"""Plain ASGI middleware (not BaseHTTPMiddleware, which breaks streaming and disconnects)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.api.responses import error_response
from proxy.errors import PayloadTooLarge
from proxy.metrics import Metrics

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContextMiddleware:
    """Outermost layer: request ids, the body size limit, and request metrics.

    * ``x-request-id`` on every response: the client's own when it is sane, else a new one.
    * Bodies over the limit are refused with 413 from ``Content-Length`` before any
      byte is read, or as soon as a chunked body crosses it.
    * Requests are counted by route template when their response ends, with latency (to
      its last byte) and time to first byte.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, body_limit: Callable[[str], int]):
        self.app = app
        self.metrics = metrics
        self.body_limit = body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        headers = dict(scope["headers"])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _CLIENT_REQUEST_ID.match(incoming) else f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id
        limit = self.body_limit(scope["path"])
        status = 500
        streaming = False
        # 0: nothing sent yet; 1: headers sent; 2: body started; 3: body complete.
        stage = 0

        def body_done() -> None:
            nonlocal stage
            stage = 3
            route = _route(scope)
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            if streaming:
                self.metrics.active_streams.dec()

        async def send_wrapper(message: Message) -> None:
            nonlocal status, streaming, stage
            if stage == 2:
                # The hot path of a stream: one check per message.
                if not message.get("more_body", False):
                    body_done()
                await send(message)
                return
            if message["type"] == "http.response.start":
                status = message["status"]
                raw = list(message.get("headers", []))
                raw.append((b"x-request-id", request_id.encode()))
                message["headers"] = raw
                streaming = any(
                    k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                    for k, v in raw
                )
                if streaming:
                    self.metrics.active_streams.inc()
                stage = 1
            elif message["type"] == "http.response.body" and stage < 2:
                more = message.get("more_body", False)
                if message.get("body") or not more:
                    stage = 2
                    self.metrics.ttfb.labels(_route(scope)).observe(time.perf_counter() - started)
                if not more:
                    body_done()
            await send(message)

        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            # Answer before reading a byte of the body.
            response = error_response(self._too_large(limit))
            await response(scope, receive, send_wrapper)
            return
        received = 0

        async def receive_wrapper() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise self._too_large(limit)
            return message

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            # Counted at the last byte: what the app does after it (recording a completion)
            # is not part of the request. Here only when the response never ended.
            if stage != 3:
                body_done()

    @staticmethod
    def _too_large(limit: int) -> PayloadTooLarge:
        return PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes.")


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
