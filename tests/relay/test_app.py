"""The relay app as a whole: what it exposes, and serving it on a unix socket."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from proxy.relay.app import create_relay_app
from proxy.relay.tokens import RunTokens
from proxy.settings import Settings
from tests.relay.conftest import REAL_KEY
from tests.support.live import serve_unix
from tests.support.scripted_anthropic import ScriptedAnthropic

Upstream = tuple[ScriptedAnthropic, str]


def test_probes_answer(relay: str) -> None:
    assert httpx.head(relay + "/").status_code == 200
    assert httpx.get(relay + "/health").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("GET", "/metrics"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1beta/models"),
    ],
)
def test_nothing_but_the_relay_is_exposed(relay: str, method: str, path: str) -> None:
    response = httpx.request(method, relay + path, json={})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


def test_wrong_method_is_a_405(relay: str) -> None:
    response = httpx.get(relay + "/v1/messages")
    assert response.status_code == 405
    assert response.json()["type"] == "error"


@pytest.mark.anyio
async def test_served_on_a_unix_socket(
    make_settings: Callable[..., Settings], tokens: RunTokens, scripted: Upstream
) -> None:
    upstream, _ = scripted
    token = tokens.issue("run-uds", "coll")
    app = create_relay_app(tokens, make_settings())
    with serve_unix(app) as path:
        transport = httpx.AsyncHTTPTransport(uds=str(path))
        # The host is never resolved: the socket is the connection.
        async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
            assert (await client.get("/health")).status_code == 200
            response = await client.post(
                "/v1/messages?beta=true",
                json={"model": "claude-x", "max_tokens": 8, "messages": [], "stream": True},
                headers={"x-api-key": token, "anthropic-version": "2023-06-01"},
            )
    assert response.status_code == 200
    assert response.content == bytes(upstream.seen[-1].sent)
    assert upstream.seen[-1].headers["x-api-key"] == REAL_KEY
