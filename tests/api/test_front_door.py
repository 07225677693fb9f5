"""Models, health, metrics, request ids, routing by model and API keys, over a live server."""

from __future__ import annotations

import contextlib
import logging
import socket
from pathlib import Path

import anyio
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from proxy.auth import hash_key, mint_key, printable_prefix
from proxy.settings import UpstreamRoute
from proxy.store import open_store
from tests.api.conftest import ProxyFactory
from tests.support.live import serve
from tests.support.openapi import validate
from tests.support.scripted_openai import ScriptedUpstream

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def test_models_merge_every_upstream(make_proxy: ProxyFactory) -> None:
    other = ScriptedUpstream(models=["claude-special", "echo"], owned_by="other")
    with serve(other.app()) as other_url:
        route = UpstreamRoute(pattern="claude-*", base_url=other_url + "/v1", api_key="sk-other")
        with make_proxy(upstreams=[route]) as proxy:
            response = httpx.get(proxy + "/v1/models")
            assert response.status_code == 200
            body = response.json()
            validate("ListModelsResponse", body)
            ids = [m["id"] for m in body["data"]]
            assert sorted(ids) == ["claude-special", "count-200", "echo"]
            listed = openai.OpenAI(base_url=proxy + "/v1", api_key="x").models.list()
            assert {m.id for m in listed} == set(ids)

            reply = httpx.post(
                proxy + "/v1/chat/completions",
                json={"model": "claude-special", "messages": MESSAGES},
            )
            assert reply.status_code == 200
            assert other.seen[-1].headers["authorization"] == "Bearer sk-other"


def test_models_still_answer_when_an_upstream_is_down(make_proxy: ProxyFactory) -> None:
    with make_proxy(upstream_url="http://127.0.0.1:9/v1") as proxy:
        response = httpx.get(proxy + "/v1/models")
        assert response.status_code == 200
        assert response.json() == {"object": "list", "data": []}


def test_health_ready_and_metrics(proxy: str) -> None:
    assert httpx.get(proxy + "/healthz").json() == {"status": "ok"}
    assert httpx.get(proxy + "/readyz").json()["store"] == "ok"
    httpx.post(proxy + "/v1/chat/completions", json={"model": "echo", "messages": MESSAGES})
    httpx.post(
        proxy + "/v1/chat/completions", json={"model": "echo", "messages": MESSAGES, "stream": True}
    )
    text = httpx.get(proxy + "/metrics").text
    assert (
        'jetty_proxy_requests_total{method="POST",route="/v1/chat/completions",status="200"} 2.0'
        in text
    )
    assert 'jetty_proxy_time_to_first_byte_seconds_count{route="/v1/chat/completions"} 2.0' in text
    assert 'jetty_proxy_request_duration_seconds_bucket{le="0.5",route="/healthz"}' in text
    assert "jetty_proxy_active_streams 0.0" in text


def _gauge(text: str, name: str) -> float:
    return float(next(line for line in text.splitlines() if line.startswith(name + " ")).split()[1])


def test_metrics_count_event_loop_tasks_and_process_resources(proxy: str) -> None:
    idle = httpx.get(proxy + "/metrics").text
    assert _gauge(idle, "process_open_fds") > 0
    assert _gauge(idle, "process_resident_memory_bytes") > 0
    body = {"model": "hang-after-first", "messages": MESSAGES, "stream": True}
    with httpx.Client() as client, contextlib.ExitStack() as stack:
        readers = []
        for _ in range(3):
            response = stack.enter_context(
                client.stream("POST", proxy + "/v1/chat/completions", json=body)
            )
            # Kept: a line iterator that goes away closes its response.
            readers.append(response.iter_lines())
            next(readers[-1])  # the stream is open and relaying
        busy = httpx.get(proxy + "/metrics").text
    # Each open relay is at least its own task and its disconnect watcher.
    assert (
        _gauge(busy, "jetty_proxy_asyncio_tasks") >= _gauge(idle, "jetty_proxy_asyncio_tasks") + 6
    )


def test_every_response_has_a_request_id(proxy: str) -> None:
    for response in (
        httpx.get(proxy + "/healthz"),
        httpx.get(proxy + "/nowhere"),
        httpx.post(proxy + "/v1/chat/completions", content=b"{"),
        httpx.post(proxy + "/v1/chat/completions", json={"model": "echo", "messages": MESSAGES}),
    ):
        assert response.headers["x-request-id"].startswith("req_")
    mine = httpx.get(proxy + "/healthz", headers={"x-request-id": "trace-42"})
    assert mine.headers["x-request-id"] == "trace-42"
    hostile = httpx.get(proxy + "/healthz", headers={"x-request-id": "a b\tc"})
    assert hostile.headers["x-request-id"].startswith("req_")


def test_unknown_routes_and_methods_are_openai_shaped(proxy: str) -> None:
    missing = httpx.get(proxy + "/v1/nope")
    assert missing.status_code == 404
    validate("ErrorResponse", missing.json())
    wrong = httpx.get(proxy + "/v1/chat/completions")
    assert wrong.status_code == 405
    validate("ErrorResponse", wrong.json())


def _create_key(data_dir: Path, *collections: str, admin: bool = False) -> str:
    secret = mint_key()

    async def create() -> None:
        store = open_store(f"sqlite:///{data_dir / 'jetty-proxy.db'}")
        await store.migrate()
        await store.create_key(hash_key(secret), printable_prefix(secret), collections, admin, None)
        await store.close()

    anyio.run(create)
    return secret


def test_keys_turn_auth_on_and_scope_collections(
    make_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[ScriptedUpstream, str]
) -> None:
    with make_proxy() as proxy:
        # No keys, loopback: one local user, no key needed.
        assert httpx.get(proxy + "/v1/models").status_code == 200
        key = _create_key(tmp_path / "data", "acme")

        missing = httpx.get(proxy + "/v1/models")
        assert missing.status_code == 401
        validate("ErrorResponse", missing.json())
        wrong = httpx.get(proxy + "/v1/models", headers={"authorization": "Bearer jp-wrong"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "invalid_api_key"

        sdk = openai.OpenAI(base_url=proxy + "/v1", api_key=key, max_retries=0)
        assert sdk.chat.completions.create(model="echo", messages=MESSAGES).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=proxy + "/v1", api_key="jp-x", max_retries=0).models.list()

        other = httpx.post(
            proxy + "/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"model": "echo", "messages": MESSAGES, "jetty": {"collection": "globex"}},
        )
        assert other.status_code == 404
        validate("ErrorResponse", other.json())
        own = httpx.post(
            proxy + "/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"model": "echo", "messages": MESSAGES, "jetty": {"collection": "acme"}},
        )
        assert own.status_code == 200
        # Health endpoints stay open for orchestrators.
        assert httpx.get(proxy + "/healthz").status_code == 200
    assert all("jp-" not in seen.headers.get("authorization", "") for seen in upstream[0].seen)


def test_a_stalled_request_body_is_cut_off_quietly(
    make_proxy: ProxyFactory,
    upstream: tuple[ScriptedUpstream, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with make_proxy(request_body_timeout=0.5) as proxy:
        host, port = proxy.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as conn:
            conn.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                b'content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"model"'
            )
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 ")
        metrics = httpx.get(proxy + "/metrics").text
    assert 'route="/v1/chat/completions",status="499"' in metrics
    assert upstream[0].seen == []
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
