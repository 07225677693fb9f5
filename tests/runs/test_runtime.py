"""The run runtime's model relay: on its unix socket always, on a TCP port when configured.

A live server (`create_app`) with ``relay_port``: the relay answers there, takes nothing
without a live run's token, and serves the sandbox backend's own routes (only there).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from proxy.app import create_app
from proxy.relay.tokens import RunTokens
from proxy.runs.runtime import serve_relay_network
from proxy.sandbox import Script, ScriptedBackend, ServesSandboxes
from proxy.settings import Settings
from tests.support.live import free_port, serve


class FilesBackend(ScriptedBackend):
    """A scripted backend whose sandboxes also call this server (as Pods do for their files)."""

    def sandbox_routes(self) -> Sequence[BaseRoute]:
        async def hello(request: Request) -> Response:
            return PlainTextResponse("files here")

        return [Route("/jetty/sandbox/v1/hello", hello)]


def settings(tmp_path: Path, **changes: object) -> Settings:
    return Settings(data_dir=tmp_path / "data", backend="local", **changes)  # type: ignore[arg-type]


def test_the_relay_listens_on_its_port_with_the_backends_routes(tmp_path: Path) -> None:
    port = free_port()
    backend = FilesBackend(lambda _: Script())
    assert isinstance(backend, ServesSandboxes)
    app = create_app(settings(tmp_path, relay_port=port), sandbox_backend=backend)
    with serve(app):
        relay = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{relay}/health").json() == {"status": "ok"}
        refused = httpx.post(
            f"{relay}/v1/messages", headers={"x-api-key": "jrt-not-a-live-run"}, json={}
        )
        assert refused.status_code == 401
        assert refused.json()["type"] == "error"  # Anthropic's shape, as on the socket
        assert httpx.get(f"{relay}/jetty/sandbox/v1/hello").text == "files here"


def test_without_a_port_nothing_listens_and_the_routes_stay_unserved(tmp_path: Path) -> None:
    port = free_port()
    app = create_app(settings(tmp_path), sandbox_backend=FilesBackend(lambda _: Script()))
    with serve(app), pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health")


@pytest.mark.anyio
async def test_a_taken_port_stops_the_start_and_names_it(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        relay = serve_relay_network(RunTokens(), settings(tmp_path, relay_port=port))
        with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1:{port}"):
            async with relay:
                pass
