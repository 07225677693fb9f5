"""The proxy's side of a sandbox Pod's file exchange (see `proxy.sandbox.kube_objects`).

An ASGI app with three routes, each authenticated by the token of one sandbox (made by the
Kubernetes backend for that Pod alone, and forgotten when it closes)::

    GET  {prefix}/inputs              the tar of the files put into the sandbox before it started
    GET  {prefix}/stop                long poll: "stop" once the agent is to be killed, else ""
    POST {prefix}/outputs?part=NAME   results | home (tars) | stderr, spooled to disk, capped

The app lives in the event loop of the backend that uses it (the relay serves it), so the
backend waits on plain `anyio.Event`s.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from proxy.sandbox.kube_objects import SANDBOX_PATHS

PARTS = ("results", "home", "stderr")
_CHUNK = 256 * 1024


@dataclass
class Exchange:
    """One sandbox's files in and out. ``parts`` maps each part received to its file;
    ``too_large`` names parts cut at the cap. ``finished`` is set once stderr, the last part
    the Pod sends, has arrived."""

    token: str = field(repr=False)
    directory: Path
    stop: anyio.Event = field(default_factory=anyio.Event)
    finished: anyio.Event = field(default_factory=anyio.Event)
    parts: dict[str, Path] = field(default_factory=dict)
    too_large: set[str] = field(default_factory=set)

    @property
    def inputs(self) -> Path:
        return self.directory / "inputs.tar"


class SandboxExchange:
    """The exchanges of the sandboxes that are open, and the app that serves them.

    ``spool_dir`` holds their files (a fresh temporary directory by default); a part larger
    than ``part_max_bytes`` is cut there and answered 413. ``poll_seconds`` bounds one stop
    poll.
    """

    def __init__(
        self,
        spool_dir: Path | None = None,
        *,
        part_max_bytes: int = 2 * 1024**3,
        poll_seconds: float = 25.0,
        prefix: str = "/jetty/sandbox/v1",
    ) -> None:
        self._spool = spool_dir
        self._part_max_bytes = part_max_bytes
        self._poll_seconds = poll_seconds
        self.prefix = prefix
        self._open: dict[str, Exchange] = {}

    def open(self) -> Exchange:
        """A new exchange with a fresh token."""
        directory = Path(tempfile.mkdtemp(prefix="jetty-pod-", dir=self._spool))
        exchange = Exchange(secrets.token_urlsafe(32), directory)
        self._open[exchange.token] = exchange
        return exchange

    def close(self, exchange: Exchange) -> None:
        """Forget ``exchange``: its token stops working and its files are removed."""
        self._open.pop(exchange.token, None)
        shutil.rmtree(exchange.directory, ignore_errors=True)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(self.prefix + SANDBOX_PATHS["inputs"], self._inputs),
                Route(self.prefix + SANDBOX_PATHS["stop"], self._stop),
                Route(self.prefix + SANDBOX_PATHS["outputs"], self._outputs, methods=["POST"]),
            ]
        )

    def _find(self, request: Request) -> Exchange | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return self._open.get(token) if scheme.lower() == "bearer" else None

    async def _inputs(self, request: Request) -> Response:
        exchange = self._find(request)
        if exchange is None:
            return PlainTextResponse("unknown sandbox token\n", status_code=401)
        if not exchange.inputs.is_file():
            return Response(b"", media_type="application/x-tar")
        return StreamingResponse(_read(exchange.inputs), media_type="application/x-tar")

    async def _stop(self, request: Request) -> Response:
        exchange = self._find(request)
        if exchange is None:
            return PlainTextResponse("unknown sandbox token\n", status_code=401)
        with anyio.move_on_after(self._poll_seconds):
            await exchange.stop.wait()
        return PlainTextResponse("stop" if exchange.stop.is_set() else "")

    async def _outputs(self, request: Request) -> Response:
        exchange = self._find(request)
        if exchange is None:
            return PlainTextResponse("unknown sandbox token\n", status_code=401)
        part = request.query_params.get("part", "")
        if part not in PARTS:
            return PlainTextResponse(f"unknown part {part!r}\n", status_code=400)
        path = exchange.directory / f"out-{part}"
        received = 0
        with path.open("wb") as file:
            async for chunk in request.stream():
                received += len(chunk)
                if received > self._part_max_bytes:
                    exchange.too_large.add(part)
                    break
                await anyio.to_thread.run_sync(file.write, chunk)
        exchange.parts[part] = path
        if part == PARTS[-1]:
            exchange.finished.set()
        if part in exchange.too_large:
            return PlainTextResponse("too large\n", status_code=413)
        return PlainTextResponse("kept\n")


async def _read(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as file:
        while chunk := await anyio.to_thread.run_sync(file.read, _CHUNK):
            yield chunk
