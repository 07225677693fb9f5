"""The proxy's side of a sandbox Pod's file exchange (see `proxy.sandbox.kube_objects`).

Three routes, served on the model relay's network listener, each authenticated by the run's
token (the Pod's only credential, as for its model calls) and only while its sandbox is open::

    GET  {prefix}/inputs              the tar of the files put into the sandbox before it started
    GET  {prefix}/stop                long poll: "stop" once the agent is to be killed, else ""
    POST {prefix}/outputs?part=NAME   results | home (tars) | stderr, spooled to disk, capped

The routes live in the event loop of the backend that uses them (the relay serves them), so
the backend waits on plain `anyio.Event`s.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from proxy.sandbox.base import SandboxStateError
from proxy.sandbox.kube_objects import SANDBOX_PATHS

PARTS = ("results", "home", "stderr")
_CHUNK = 256 * 1024


@dataclass
class Exchange:
    """One sandbox's files in and out. ``parts`` maps each part received whole to its file;
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
        """The tar the Pod fetches: empty until files are added."""
        return self.directory / "inputs.tar"


class SandboxExchange:
    """The exchanges of the sandboxes that are open, and the routes that serve them.

    ``spool_dir`` holds their files (the system's temporary directory by default); a part
    larger than ``part_max_bytes`` is cut there and answered 413. ``poll_seconds`` bounds one
    stop poll.
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

    def open(self, token: str) -> Exchange:
        """A new exchange for the sandbox of the run whose token is ``token``."""
        if token in self._open:
            raise SandboxStateError("this run already has an open sandbox")
        directory = Path(tempfile.mkdtemp(prefix="jetty-pod-", dir=self._spool))
        with tarfile.open(directory / "inputs.tar", "w"):
            pass  # an empty archive: a Pod with no files to fetch unpacks nothing
        exchange = Exchange(token, directory)
        self._open[token] = exchange
        return exchange

    def close(self, exchange: Exchange) -> None:
        """Forget ``exchange``: its token stops working here and its files are removed."""
        if self._open.get(exchange.token) is exchange:
            del self._open[exchange.token]
        shutil.rmtree(exchange.directory, ignore_errors=True)

    def routes(self) -> list[BaseRoute]:
        return [
            Route(self.prefix + SANDBOX_PATHS["inputs"], self._inputs),
            Route(self.prefix + SANDBOX_PATHS["stop"], self._stop),
            Route(self.prefix + SANDBOX_PATHS["outputs"], self._outputs, methods=["POST"]),
        ]

    def _find(self, request: Request) -> Exchange | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return self._open.get(token) if scheme.lower() == "bearer" else None

    async def _inputs(self, request: Request) -> Response:
        exchange = self._find(request)
        if exchange is None:
            return _unknown()
        return StreamingResponse(_read(exchange.inputs), media_type="application/x-tar")

    async def _stop(self, request: Request) -> Response:
        exchange = self._find(request)
        if exchange is None:
            return _unknown()
        with anyio.move_on_after(self._poll_seconds):
            await exchange.stop.wait()
        return PlainTextResponse("stop" if exchange.stop.is_set() else "")

    async def _outputs(self, request: Request) -> Response:
        exchange = self._find(request)
        if exchange is None:
            return _unknown()
        part = request.query_params.get("part", "")
        if part not in PARTS:
            return PlainTextResponse(f"unknown part {part!r}\n", status_code=400)
        path = exchange.directory / f"out-{part}"
        received = 0
        try:
            with path.open("wb") as file:
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > self._part_max_bytes:
                        exchange.too_large.add(part)
                        break
                    await anyio.to_thread.run_sync(file.write, chunk)
        except ClientDisconnect:
            return Response(status_code=400)  # cut off: a part is kept only whole
        exchange.parts[part] = path
        if part == PARTS[-1]:
            exchange.finished.set()
        if part in exchange.too_large:
            return PlainTextResponse("too large\n", status_code=413)
        return PlainTextResponse("kept\n")


def _unknown() -> Response:
    return PlainTextResponse("unknown sandbox token\n", status_code=401)


async def _read(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as file:
        while chunk := await anyio.to_thread.run_sync(file.read, _CHUNK):
            yield chunk
