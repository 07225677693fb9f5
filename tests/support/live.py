"""Real HTTP servers for tests: uvicorn on a free loopback port, in a background thread.

Streaming and disconnect behaviour can only be tested over a real socket
(httpx's ASGI transport buffers whole bodies), so tests talk to these.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import anyio
import httpx
import uvicorn
from starlette.types import ASGIApp

from proxy.server import edge_options, server_config
from proxy.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_answering(
    url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 60.0
) -> None:
    """Return once ``url`` answers a GET (any status); `RuntimeError` when ``process`` exits
    first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer") from None
            time.sleep(0.1)


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test runner owns signals
        pass


@contextmanager
def serve(
    app: ASGIApp, *, port: int | None = None, settings: Settings | None = None
) -> Iterator[str]:
    """Run ``app`` until the block ends; yields its base URL (``http://127.0.0.1:PORT``).

    With ``settings``, the server holds clients to their limits, as ``serve`` does.
    """
    port = port or free_port()
    config = server_config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        loop="asyncio",
        **(edge_options(settings) if settings is not None else {}),
    )
    with _running(config, f"port {port}"):
        yield f"http://127.0.0.1:{port}"


@asynccontextmanager
async def serve_here(app: ASGIApp) -> AsyncIterator[str]:
    """Run ``app`` in the current event loop until the block ends; yields its base URL.

    For apps that share state (events, locks) with the test's own tasks.
    """
    port = free_port()
    config = server_config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", loop="asyncio"
    )
    server = _Server(config)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve)
        while not server.started:
            await anyio.sleep(0.005)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True


@contextmanager
def serve_unix(app: ASGIApp) -> Iterator[Path]:
    """Run ``app`` on a unix socket until the block ends; yields the socket's path."""
    # Socket paths are limited to ~100 bytes, too few for pytest's tmp_path.
    with tempfile.TemporaryDirectory(prefix="relay-") as directory:
        path = Path(directory) / "relay.sock"
        config = server_config(
            app, uds=str(path), log_level="warning", lifespan="on", loop="asyncio"
        )
        with _running(config, "a unix socket"):
            yield path


@contextmanager
def _running(config: uvicorn.Config, where: str) -> Iterator[None]:
    server = _Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn {where}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"test server on {where} did not start")
        time.sleep(0.005)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class ServeProcess:
    """A ``jetty-proxy serve`` process started by :func:`serve_process`."""

    url: str
    process: subprocess.Popen[str]
    #: Where its stderr goes (a file: a pipe nobody reads would block a talkative server).
    log: IO[str]
    #: What it printed on stderr, once it has exited.
    err: str = ""

    def printed(self) -> str:
        """What it has printed on stderr so far."""
        self.log.seek(0)
        return self.log.read()


@contextmanager
def serve_process(
    args: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> Iterator[ServeProcess]:
    """Run ``python -m proxy serve --port PORT ARGS`` until the block ends, once it answers
    ``/healthz`` on loopback; then stop it with SIGTERM (unless it is gone already)."""
    port = free_port()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--port", str(port), *args],
            env={**os.environ, **(env or {})},
            stderr=log,
            text=True,
        )
        served = ServeProcess(f"http://127.0.0.1:{port}", process, log)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(served.url + "/healthz")
                    break
                except httpx.ConnectError:
                    if process.poll() is not None:
                        raise RuntimeError(f"serve exited early: {served.printed()}") from None
                    if time.monotonic() > deadline:
                        raise RuntimeError("serve did not come up") from None
                    time.sleep(0.1)
            yield served
        finally:
            if process.poll() is None:
                process.terminate()
            process.wait(timeout=30)
            served.err = served.printed()
