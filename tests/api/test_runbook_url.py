"""``jetty.runbook_url`` on a live proxy: internal addresses are never fetched, whatever their
spelling or however a redirect leads there, and every failure looks the same to the client.

The proxy runs the local backend with an empty agent cache: a request that got past the checks
would create a trajectory, so "nothing started" is visible as no trajectory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.api.conftest import ProxyFactory
from tests.api.test_providers import assert_nothing_started
from tests.support.live import serve

RUNBOOK = "# Runbook\n\nWrite {{needed}} into {{results_dir}}."


class RunbookServer:
    """Serves the runbook at any path; ``/go?to=URL`` redirects. Counts what it was asked."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def app(self) -> Starlette:
        async def anything(request: Request) -> Response:
            self.paths.append(request.url.path)
            if "to" in request.query_params:
                return RedirectResponse(request.query_params["to"], status_code=302)
            return PlainTextResponse(RUNBOOK)

        return Starlette(routes=[Route("/{path:path}", anything)])


@pytest.fixture
def runbooks() -> Iterator[tuple[RunbookServer, int]]:
    server = RunbookServer()
    with serve(server.app()) as url:
        yield server, int(url.rsplit(":", 1)[1])


@pytest.fixture
def agent_cache(tmp_path: Path) -> Path:
    return tmp_path / "agents"


def run(proxy: str, url: str) -> httpx.Response:
    return httpx.post(
        proxy + "/v1/chat/completions",
        json={
            "model": "claude-sonnet-4-6",
            "messages": [{"role": "user", "content": "Execute the runbook."}],
            "jetty": {"runbook": True, "collection": "acme", "task": "t", "runbook_url": url},
        },
        timeout=60,
    )


def test_internal_urls_are_never_fetched_and_all_fail_alike(
    make_proxy: ProxyFactory, runbooks: tuple[RunbookServer, int], agent_cache: Path
) -> None:
    server, port = runbooks
    with make_proxy(default_image="local", agent_cache_dir=agent_cache) as proxy:
        urls = [
            f"{proxy}/metrics",  # the proxy itself
            f"http://127.0.0.1:{port}/r.md",
            f"http://localhost:{port}/r.md",
            f"http://2130706433:{port}/r.md",
            f"http://0x7f.1:{port}/r.md",
            f"http://[::ffff:127.0.0.1]:{port}/r.md",
            "http://127.0.0.1:9/closed-port",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.255.255.1/",
        ]
        bodies: list[dict[str, Any]] = []
        for url in urls:
            response = run(proxy, url)
            assert response.status_code == 400, (url, response.text)
            assert "x-jetty-trajectory-id" not in response.headers
            bodies.append(response.json())
        assert_nothing_started(proxy, agent_cache)
    assert server.paths == []
    error = bodies[0]["error"]
    assert (error["param"], error["code"]) == ("jetty.runbook_url", "runbook_url_unavailable")
    assert all(body == bodies[0] for body in bodies), "failures must not tell causes apart"


def test_an_allowed_internal_host_is_fetched_and_its_redirects_are_checked(
    make_proxy: ProxyFactory, runbooks: tuple[RunbookServer, int], agent_cache: Path
) -> None:
    server, port = runbooks
    allowed = {"default_image": "local", "agent_cache_dir": agent_cache}
    with make_proxy(fetch_allow_hosts=["localhost"], **allowed) as proxy:
        # Fetched: the 400 is about the runbook's own template variable.
        fetched = run(proxy, f"http://localhost:{port}/r.md")
        assert fetched.status_code == 400, fetched.text
        assert fetched.json()["error"]["param"] == "jetty.template_variables"
        assert "'needed'" in fetched.json()["error"]["message"]
        # The allowed host redirects to an address that is not allowed: refused at that hop.
        redirected = run(proxy, f"http://localhost:{port}/go?to=http://127.0.0.1:{port}/secret")
        assert redirected.status_code == 400
        assert redirected.json()["error"]["code"] == "runbook_url_unavailable"
        assert_nothing_started(proxy, agent_cache)
    assert server.paths == ["/r.md", "/go"]
