"""Plain ASGI middleware (not BaseHTTPMiddleware, which breaks streaming and disconnects)."""

from __future__ import annotations

import inspect
import itertools
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import (
    ASGIApp,
    ExceptionHandler,
    HTTPExceptionHandler,
    Message,
    Receive,
    Scope,
    Send,
)

from proxy.api.recording import FirstBytes
from proxy.api.responses import error_response
from proxy.errors import PayloadTooLarge
from proxy.metrics import Metrics

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Request ids: this process's random prefix and a counter. Unique, cheap (no system call
# per request), and not secrets: clients may send their own.
_ID_PREFIX = "req_" + os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def _new_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


class RequestContextMiddleware:
    """Outermost layer: request ids, the body size limit, and request metrics.

    * ``x-request-id`` on every response: the client's own when it is sane, else a new one.
    * Bodies over the limit are refused with 413 from ``Content-Length`` before any
      byte is read, or as soon as a chunked body crosses it.
    * Requests are counted by route template when their response ends, with latency (to
      its last byte) and time to first byte. Metrics are taken after the message that
      ends a wait has gone out, never before it.
    * ``first_bytes``, when given, learns when a request comes in and when its response
      has sent its first byte.
    * ``direct``, when given, serves its route without going through ``app`` (see
      :class:`DirectRoute`).
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        body_limit: Callable[[str], int],
        first_bytes: FirstBytes | None = None,
        direct: DirectRoute | None = None,
    ):
        self.app = app
        self.direct = direct
        self.metrics = metrics
        self.body_limit = body_limit
        self.first_bytes = first_bytes or FirstBytes()
        # Labelled children, looked up once: labels() takes a lock and builds a key each time.
        self._ttfb: dict[str, Any] = {}
        self._latency: dict[str, Any] = {}
        self._requests: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        headers = dict(scope["headers"])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if incoming and _CLIENT_REQUEST_ID.match(incoming) else _new_id()
        request_id_header = (b"x-request-id", request_id.encode())
        scope.setdefault("state", {})["request_id"] = request_id
        limit = self.body_limit(scope["path"])
        first_bytes = self.first_bytes
        first_bytes.begin()
        status = 500
        streaming = False
        # 0: nothing sent yet; 1: headers sent; 2: body started; 3: body complete.
        stage = 0

        def body_done(ended: float) -> None:
            route = _route(scope)
            self._latency_of(route).observe(ended - started)
            self._requests_of(route, scope["method"], status).inc()
            if streaming:
                self.metrics.active_streams.dec()

        async def send_wrapper(message: Message) -> None:
            nonlocal status, streaming, stage
            if stage == 2:
                # The hot path of a stream: one check per message.
                if message.get("more_body", False):
                    await send(message)
                    return
                stage = 3
                ended = time.perf_counter()
                try:
                    await send(message)
                finally:
                    body_done(ended)
                return
            if message["type"] == "http.response.start":
                status = message["status"]
                raw = list(message.get("headers", []))
                raw.append(request_id_header)
                message["headers"] = raw
                stage = 1
                await send(message)
                if any(
                    k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                    for k, v in raw
                ):
                    streaming = True
                    self.metrics.active_streams.inc()
                return
            if message["type"] != "http.response.body" or stage >= 2:
                await send(message)
                return
            more = message.get("more_body", False)
            if not message.get("body") and more:
                await send(message)
                return
            stage = 2 if more else 3
            now = time.perf_counter()
            try:
                await send(message)
            finally:
                first_bytes.sent()
                self._ttfb_of(_route(scope)).observe(now - started)
                if not more:
                    body_done(now)

        try:
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

            direct = self.direct
            if direct is not None and direct.matches(scope):
                await direct(scope, receive_wrapper, send_wrapper, lambda: stage > 0)
            else:
                await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            # Counted at the last byte: what the app does after it (recording a completion)
            # is not part of the request. Here only when the response never ended.
            if stage < 2:
                first_bytes.sent()
            if stage != 3:
                stage = 3
                body_done(time.perf_counter())

    def _ttfb_of(self, route: str) -> Any:
        child = self._ttfb.get(route)
        if child is None:
            child = self._ttfb[route] = self.metrics.ttfb.labels(route)
        return child

    def _latency_of(self, route: str) -> Any:
        child = self._latency.get(route)
        if child is None:
            child = self._latency[route] = self.metrics.latency.labels(route)
        return child

    def _requests_of(self, route: str, method: str, status: int) -> Any:
        key = (route, method, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.metrics.requests.labels(route, method, str(status))
        return child

    @staticmethod
    def _too_large(limit: int) -> PayloadTooLarge:
        return PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes.")


class DirectRoute:
    """Serves one route from its endpoint, around Starlette's router and exception middlewares.

    For the hot route (``POST /v1/chat/completions``) these cost tens of microseconds
    before the first byte and three wrapper calls on every message of a stream. The
    request middleware asks :meth:`matches` and serves the requests that the route takes
    in full here; the rest go on through the application.

    Errors are answered as Starlette would answer them, by the app's ``handlers`` (looked up
    along the exception's class hierarchy). An error that only the handler for
    ``Exception`` takes is re-raised once answered, and an error after the response has
    started is always re-raised, so that the server logs it (and drops the connection).
    """

    def __init__(self, route: Route, handlers: Mapping[Any, ExceptionHandler], router: ASGIApp):
        self.route = route
        self.handlers = handlers
        self.router = router
        self._endpoint = cast(Callable[[Request], Awaitable[Response]], route.endpoint)
        self._methods = route.methods or set()

    def matches(self, scope: Scope) -> bool:
        # The path compared as Starlette would (without a root path), the method as sent.
        return scope["path"] == self.route.path and scope["method"] in self._methods

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, started: Callable[[], bool]
    ) -> None:
        """Serve a request that :meth:`matches`; ``started`` tells whether its response has
        begun (after which an error can no longer be answered)."""
        scope["endpoint"] = self._endpoint
        scope["path_params"] = {}
        scope["route"] = self.route
        scope.setdefault("router", self.router)
        request = Request(scope, receive, send)
        try:
            response = await self._endpoint(request)
            await response(scope, receive, send)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None or started():
                raise
            answer = handler(request, exc)
            if inspect.isawaitable(answer):
                answer = await answer
            await answer(scope, receive, send)
            if handler is self.handlers.get(Exception):
                raise

    def _handler(self, exc: Exception) -> HTTPExceptionHandler | None:
        for cls in type(exc).__mro__:
            handler = self.handlers.get(cls)
            if handler is not None:
                return cast(HTTPExceptionHandler, handler)
        return None


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
