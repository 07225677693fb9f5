"""The Anthropic relay: a live relay, a live scripted upstream, real HTTP in between."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from pydantic import SecretStr

from proxy.relay import anthropic
from proxy.relay.anthropic import UsageReader
from proxy.relay.tokens import Credential, ModelUsage, ProviderCreds, RunTokens
from tests.relay.conftest import REAL_KEY, RelayFactory, UsageLog
from tests.support.live import free_port, serve
from tests.support.scripted_anthropic import USAGE, ScriptedAnthropic

Upstream = tuple[ScriptedAnthropic, str]
HEADERS = {"anthropic-version": "2023-06-01", "anthropic-beta": "claude-code-20250219"}


def request_body(*, stream: bool = True, tool_result: bool = False) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "write hello.txt"}]},
    ]
    if tool_result:
        messages += [
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}],
            },
        ]
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "You are a test."}],
        "messages": messages,
        "stream": stream,
    }


def post(
    relay: str, token: str | None, body: dict[str, Any], path: str = "/v1/messages?beta=true"
) -> httpx.Response:
    headers = dict(HEADERS)
    if token is not None:
        headers["x-api-key"] = token
    return httpx.post(relay + path, json=body, headers=headers, timeout=10)


def wait_for(condition: Callable[[], object], seconds: float = 5.0) -> None:
    """Usage is reported just after the response ends, so tests wait a moment for it."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]


def test_a_stream_passes_through_byte_for_byte(
    relay: str, tokens: RunTokens, scripted: Upstream
) -> None:
    upstream, _ = scripted
    token = tokens.issue("run1", "coll")
    response = post(relay, token, request_body())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["request-id"] == "req_scripted"
    assert response.headers["anthropic-ratelimit-requests-remaining"] == "99"
    assert response.content == bytes(upstream.seen[-1].sent)
    events = sse_events(response.content)
    assert [e["type"] for e in events][:1] == ["message_start"]
    assert events[-1]["type"] == "message_stop"
    tool = next(e for e in events if e.get("content_block", {}).get("type") == "tool_use")
    assert tool["content_block"]["name"] == "Bash"


def test_a_plain_answer_passes_through_untouched(
    relay: str, tokens: RunTokens, scripted: Upstream
) -> None:
    token = tokens.issue("run1", "coll")
    response = post(relay, token, request_body(stream=False, tool_result=True))
    assert response.status_code == 200
    message = response.json()
    assert message["content"] == [{"type": "text", "text": "Done: wrote hello.txt"}]
    assert message["stop_reason"] == "end_turn"


def test_fresh_tool_use_ids_every_call(relay: str, tokens: RunTokens) -> None:
    token = tokens.issue("run1", "coll")
    ids = set()
    for _ in range(3):
        content = post(relay, token, request_body(stream=False)).json()["content"]
        ids.add(next(b["id"] for b in content if b["type"] == "tool_use"))
    assert len(ids) == 3


def test_upstream_gets_the_real_key_and_never_the_run_token(
    relay: str, tokens: RunTokens, scripted: Upstream
) -> None:
    upstream, _ = scripted
    token = tokens.issue("run1", "coll")
    body = json.dumps(request_body()).encode()
    headers = {**HEADERS, "authorization": f"Bearer {token}", "cookie": "c=1", "x-other": "y"}
    response = httpx.post(relay + "/v1/messages?beta=true", content=body, headers=headers)
    assert response.status_code == 200

    seen = upstream.seen[-1]
    assert seen.headers["x-api-key"] == REAL_KEY
    assert "authorization" not in seen.headers
    assert "cookie" not in seen.headers
    assert "x-other" not in seen.headers
    assert all(token not in value for value in seen.headers.values())
    assert seen.headers["anthropic-version"] == HEADERS["anthropic-version"]
    assert seen.headers["anthropic-beta"] == HEADERS["anthropic-beta"]
    assert seen.headers["content-type"] == "application/json"
    assert seen.query == "beta=true"
    assert seen.body == body


def test_a_runs_own_key_replaces_the_servers(
    relay: str, tokens: RunTokens, scripted: Upstream
) -> None:
    upstream, _ = scripted
    own = ProviderCreds(anthropic=Credential(SecretStr("sk-ant-collection")))
    token = tokens.issue("run1", "coll", own)
    assert post(relay, token, request_body(stream=False)).status_code == 200
    assert upstream.seen[-1].headers["x-api-key"] == "sk-ant-collection"


@pytest.mark.parametrize("provider", ["openrouter", "bedrock"])
def test_a_gateway_gets_the_runs_key_as_a_bearer_token(
    relay: str, tokens: RunTokens, scripted: Upstream, usage_log: UsageLog, provider: str
) -> None:
    default, _ = scripted
    gateway = ScriptedAnthropic()
    with serve(gateway.app()) as gateway_url:
        own = ProviderCreds(
            anthropic=Credential(SecretStr("sk-or-gateway"), gateway_url + "/", "bearer"),
            provider=provider,
        )
        token = tokens.issue("run1", "coll", own)
        assert post(relay, token, request_body()).status_code == 200
        assert post(relay, token, request_body(stream=False)).status_code == 200
    assert default.seen == []
    assert [seen.path for seen in gateway.seen] == ["/v1/messages", "/v1/messages"]
    for seen in gateway.seen:
        assert seen.query == "beta=true"
        assert seen.headers["authorization"] == "Bearer sk-or-gateway"
        assert "x-api-key" not in seen.headers
        assert all(token not in value for value in seen.headers.values())
    wait_for(lambda: len(usage_log) >= 2)
    assert {usage.provider for _, usage in usage_log} == {provider}


@pytest.mark.parametrize("stream", [True, False])
def test_a_collections_base_url_cannot_reach_internal_addresses(
    make_relay: RelayFactory, tokens: RunTokens, scripted: Upstream, stream: bool
) -> None:
    default, _ = scripted
    gateway = ScriptedAnthropic()
    with serve(gateway.app()) as gateway_url:
        # What select_credentials makes of a collection's ANTHROPIC_BASE_URL secret.
        own = ProviderCreds(
            anthropic=Credential(SecretStr("sk-ant-coll"), gateway_url, guarded=True)
        )
        token = tokens.issue("run1", "coll", own)
        with make_relay() as relay:
            refused = post(relay, token, request_body(stream=stream))
        assert refused.status_code == 502
        assert "127.0.0.1" in refused.text and "AddressRefused" in refused.text
        assert gateway.seen == [] and default.seen == []
        # The operator may allow an internal gateway by name or address.
        with make_relay(fetch_allow_hosts=["127.0.0.1"]) as relay:
            assert post(relay, token, request_body(stream=stream)).status_code == 200
    assert [seen.headers["x-api-key"] for seen in gateway.seen] == ["sk-ant-coll"]
    assert default.seen == []


@pytest.mark.parametrize("case", ["missing", "unknown", "revoked", "bearer-unknown"])
def test_bad_tokens_get_401_and_nothing_is_forwarded(
    relay: str, tokens: RunTokens, scripted: Upstream, case: str
) -> None:
    upstream, _ = scripted
    token = tokens.issue("run1", "coll")
    if case == "revoked":
        tokens.revoke("run1")
    headers = dict(HEADERS)
    if case == "bearer-unknown":
        headers["authorization"] = "Bearer jrt-forged"
    elif case != "missing":
        headers["x-api-key"] = token if case == "revoked" else "jrt-forged"
    response = httpx.post(relay + "/v1/messages", json=request_body(), headers=headers)
    assert response.status_code == 401
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "authentication_error"
    assert response.headers["x-should-retry"] == "false"
    assert upstream.seen == []


def test_usage_is_reported_once_per_model_call(
    relay: str, tokens: RunTokens, scripted: Upstream, usage_log: UsageLog
) -> None:
    hooked: list[ModelUsage] = []

    async def hook(usage: ModelUsage) -> None:
        hooked.append(usage)

    token = tokens.issue("run1", "coll", on_usage=hook)
    post(relay, token, request_body())
    post(relay, token, request_body(stream=False, tool_result=True))
    post(relay, token, request_body(stream=False), path="/v1/messages/count_tokens")
    wait_for(lambda: len(usage_log) >= 2 and len(hooked) >= 2)

    expected = ModelUsage(
        "anthropic",
        "claude-sonnet-4-5",
        input_tokens=USAGE["input_tokens"],
        output_tokens=USAGE["output_tokens"],
        cache_creation_input_tokens=USAGE["cache_creation_input_tokens"],
        cache_read_input_tokens=USAGE["cache_read_input_tokens"],
    )
    assert usage_log == [("run1", expected), ("run1", expected)]
    assert hooked == [expected, expected]
    assert expected.prompt_tokens == 23


def test_count_tokens_is_relayed(relay: str, tokens: RunTokens, scripted: Upstream) -> None:
    upstream, _ = scripted
    token = tokens.issue("run1", "coll")
    response = post(relay, token, request_body(stream=False), path="/v1/messages/count_tokens")
    assert response.status_code == 200
    assert response.json() == {"input_tokens": USAGE["input_tokens"]}
    assert upstream.seen[-1].path == "/v1/messages/count_tokens"
    assert upstream.seen[-1].headers["x-api-key"] == REAL_KEY


@pytest.mark.anyio
async def test_an_agent_going_away_cancels_the_upstream_call(
    relay: str, tokens: RunTokens, scripted: Upstream, usage_log: UsageLog
) -> None:
    upstream, _ = scripted
    upstream.mode = "hang"
    token = tokens.issue("run1", "coll")
    async with httpx.AsyncClient(timeout=10) as client:
        headers = {**HEADERS, "x-api-key": token}
        request = client.build_request(
            "POST", relay + "/v1/messages", json=request_body(), headers=headers
        )
        response = await client.send(request, stream=True)
        assert response.status_code == 200
        async for piece in response.aiter_bytes():
            assert b"message_start" in piece
            break
        await response.aclose()
    deadline = time.monotonic() + 5
    while (upstream.seen[-1].disconnected is None or not usage_log) and (
        time.monotonic() < deadline
    ):
        await anyio.sleep(0.02)
    assert upstream.seen[-1].disconnected is not None
    # The input side had been reported; the call did not complete.
    assert len(usage_log) == 1
    assert usage_log[0][1].input_tokens == USAGE["input_tokens"]
    assert usage_log[0][1].complete is False


@pytest.mark.parametrize("stream", [True, False])
def test_upstream_down_is_a_502(make_relay: RelayFactory, tokens: RunTokens, stream: bool) -> None:
    token = tokens.issue("run1", "coll")
    with make_relay(anthropic_base_url=f"http://127.0.0.1:{free_port()}") as relay:
        response = post(relay, token, request_body(stream=stream))
    assert response.status_code == 502
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "api_error"
    assert "unreachable" in response.json()["error"]["message"]


@pytest.mark.parametrize(("status", "kind"), [(401, "authentication_error"), (500, "api_error")])
@pytest.mark.parametrize("stream", [True, False])
def test_upstream_errors_keep_status_and_body(
    relay: str, tokens: RunTokens, scripted: Upstream, status: int, kind: str, stream: bool
) -> None:
    upstream, _ = scripted
    upstream.mode, upstream.error_status = "error", status
    token = tokens.issue("run1", "coll")
    response = post(relay, token, request_body(stream=stream))
    assert response.status_code == status
    assert response.json() == {
        "type": "error",
        "error": {"type": kind, "message": f"scripted {status}"},
    }


def test_a_truncated_stream_ends_with_an_error_event(
    relay: str, tokens: RunTokens, scripted: Upstream, usage_log: UsageLog
) -> None:
    upstream, _ = scripted
    upstream.mode = "truncate"
    response = post(relay, tokens.issue("run1", "coll"), request_body())
    assert response.status_code == 200
    last = response.content.decode().rstrip("\n").split("\n\n")[-1]
    assert last.startswith("event: error\n")
    assert sse_events(last.encode())[0]["error"]["type"] == "api_error"
    wait_for(lambda: usage_log)
    assert usage_log[0][1].complete is False


def test_no_key_configured_is_a_clear_500(
    make_relay: RelayFactory, tokens: RunTokens, scripted: Upstream
) -> None:
    upstream, _ = scripted
    with make_relay(anthropic_api_key=None) as relay:
        response = post(relay, tokens.issue("run1", "coll"), request_body())
    assert response.status_code == 500
    assert "no Anthropic API key" in response.json()["error"]["message"]
    assert upstream.seen == []


def test_a_body_over_the_limit_is_a_413_that_never_reaches_the_upstream(
    relay: str, tokens: RunTokens, scripted: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream, _ = scripted
    monkeypatch.setattr(anthropic, "MAX_REQUEST_BYTES", 1000)
    body = {**request_body(), "metadata": {"padding": "x" * 1000}}
    response = post(relay, tokens.issue("run1", "coll"), body)
    assert response.status_code == 413
    assert response.headers["x-should-retry"] == "false"
    assert response.json() == {
        "type": "error",
        "error": {"type": "request_too_large", "message": "Request body exceeds 1000 bytes."},
    }
    assert upstream.seen == []


def test_invalid_json_is_a_400(relay: str, tokens: RunTokens, scripted: Upstream) -> None:
    headers = {**HEADERS, "x-api-key": tokens.issue("run1", "coll")}
    response = httpx.post(relay + "/v1/messages", content=b"{nope", headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert scripted[0].seen == []


def test_usage_reader_takes_later_numbers_and_ignores_garbage() -> None:
    reader = UsageReader("claude-x")
    assert reader.result(complete=True) is None
    reader.feed_sse(
        b"event: message_start\r\ndata: "
        + json.dumps(
            {
                "type": "message_start",
                "message": {"model": "claude-y", "usage": {"input_tokens": 3, "output_tokens": 1}},
            }
        ).encode()
        + b"\r\n\r\nevent: ping\r\ndata: {not json\r\n\r\n"
    )
    reader.feed_sse(b'event: message_delta\ndata: {"type": "message_delta", "usage": "x"}\n\n')
    reader.feed_sse(
        b'data: {"type": "message_delta", "usage": {"output_tokens": 9,'
        b' "input_tokens": 4, "cache_read_input_tokens": null}}\n\n'
    )
    assert reader.result(complete=True) == ModelUsage(
        "anthropic", "claude-y", input_tokens=4, output_tokens=9
    )


def test_a_failing_usage_hook_does_not_break_the_call(
    relay: str, tokens: RunTokens, usage_log: UsageLog, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(usage: ModelUsage) -> None:
        raise RuntimeError("accounting is down")

    token = tokens.issue("run1", "coll", on_usage=broken)
    response = post(relay, token, request_body())
    assert response.status_code == 200
    wait_for(lambda: usage_log)  # the app-level callback still ran
    assert "usage hook of run run1 failed" in caplog.text
    assert token not in caplog.text
