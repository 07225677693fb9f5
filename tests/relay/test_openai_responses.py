"""The Responses API relay: a live relay, a live scripted upstream, real HTTP in between."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pydantic import SecretStr, ValidationError

from proxy.errors import UpstreamUnavailable
from proxy.relay.openai_responses import ResponsesDialect, UsageReader
from proxy.relay.tokens import Credential, ModelUsage, ProviderCreds, RunTokens
from proxy.settings import Settings
from tests.relay.conftest import REAL_KEY, RelayFactory, UsageLog
from tests.relay.test_anthropic import wait_for
from tests.support.live import free_port, serve
from tests.support.scripted_responses import USAGE, ScriptedResponses

Upstream = tuple[ScriptedResponses, str]
CACHED = 5
EXPECTED = ModelUsage(
    "openai",
    "gpt-5.5",
    input_tokens=31 - CACHED,
    output_tokens=17,
    cache_read_input_tokens=CACHED,
    reasoning_tokens=3,
)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    scripted = ScriptedResponses()
    with serve(scripted.app()) as url:
        yield scripted, url


@pytest.fixture
def make_settings(tmp_path: Path, upstream: Upstream) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        fields: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "openai_base_url": upstream[1] + "/v1",
            "openai_api_key": REAL_KEY,
        }
        return Settings(**{**fields, **overrides})

    return build


def request_body(*, stream: bool = True, tool_output: bool = False) -> dict[str, Any]:
    items: list[dict[str, Any]] = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
    ]
    if tool_output:
        items += [
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "exec_command",
                "arguments": "{}",
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "ok"},
        ]
    return {"model": "gpt-5.5", "input": items, "stream": stream, "store": False}


def post(relay: str, token: str | None, body: dict[str, Any], **headers: str) -> httpx.Response:
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return httpx.post(relay + "/v1/responses", json=body, headers=headers, timeout=10)


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]


def test_a_stream_passes_through_byte_for_byte(
    relay: str, tokens: RunTokens, upstream: Upstream
) -> None:
    scripted, _ = upstream
    response = post(relay, tokens.issue("run1", "coll"), request_body())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-request-id"] == "req_scripted"
    assert response.headers["x-ratelimit-remaining-requests"] == "99"
    assert response.content == bytes(scripted.seen[-1].sent)
    events = sse_events(response.content)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.output_item.done",
        "response.completed",
    ]
    call = events[1]["item"]
    assert (call["type"], call["name"]) == ("function_call", "exec_command")
    assert "cmd" in json.loads(call["arguments"])


def test_a_plain_answer_passes_through_untouched(relay: str, tokens: RunTokens) -> None:
    token = tokens.issue("run1", "coll")
    response = post(relay, token, request_body(stream=False, tool_output=True))
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req_scripted"
    body = response.json()
    assert body["status"] == "completed"
    assert body["output"][0]["content"][0]["text"] == "Done: wrote hello.txt"


def test_fresh_call_ids_every_call(relay: str, tokens: RunTokens) -> None:
    token = tokens.issue("run1", "coll")
    ids = {post(relay, token, request_body(stream=False)).json()["output"][0]["call_id"]}
    ids |= {post(relay, token, request_body(stream=False)).json()["output"][0]["call_id"]}
    assert len(ids) == 2


def test_upstream_gets_the_real_key_and_never_the_run_token(
    relay: str, tokens: RunTokens, upstream: Upstream
) -> None:
    scripted, _ = upstream
    token = tokens.issue("run1", "coll")
    body = json.dumps(request_body()).encode()
    headers = {
        "authorization": f"Bearer {token}",
        "content-type": "application/json",
        "originator": "codex_exec",
        "session_id": "sess-1",
        "openai-organization": "org-agent",
        "chatgpt-account-id": "acct",
        "cookie": "c=1",
    }
    response = httpx.post(relay + "/v1/responses?trace=1", content=body, headers=headers)
    assert response.status_code == 200

    seen = scripted.seen[-1]
    assert seen.path == "/v1/responses"
    assert seen.query == "trace=1"
    assert seen.headers["authorization"] == f"Bearer {REAL_KEY}"
    assert seen.headers["originator"] == "codex_exec"
    assert seen.headers["session_id"] == "sess-1"
    for dropped in ("openai-organization", "chatgpt-account-id", "cookie", "x-api-key"):
        assert dropped not in seen.headers
    assert all(token not in value for value in seen.headers.values())
    assert seen.body == body


def test_a_runs_own_key_and_url_replace_the_servers(
    relay: str, tokens: RunTokens, upstream: Upstream
) -> None:
    scripted, url = upstream
    own = ProviderCreds(openai=Credential(SecretStr("sk-collection"), base_url=url + "/v1/"))
    token = tokens.issue("run1", "coll", own)
    assert post(relay, token, request_body(stream=False)).status_code == 200
    assert scripted.seen[-1].headers["authorization"] == "Bearer sk-collection"


def test_a_collections_base_url_cannot_reach_internal_addresses(
    make_relay: RelayFactory, tokens: RunTokens, upstream: Upstream
) -> None:
    scripted, url = upstream
    own = ProviderCreds(
        openai=Credential(SecretStr("sk-collection"), base_url=url + "/v1", guarded=True)
    )
    token = tokens.issue("run1", "coll", own)
    with make_relay() as relay:
        refused = post(relay, token, request_body(stream=False))
    assert refused.status_code == 502
    assert "AddressRefused" in refused.text
    assert scripted.seen == []
    with make_relay(fetch_allow_hosts=["127.0.0.0/8"]) as relay:
        assert post(relay, token, request_body(stream=False)).status_code == 200
    assert scripted.seen[-1].headers["authorization"] == "Bearer sk-collection"


def test_a_run_on_openrouter_goes_to_its_url_and_is_credited_to_it(
    relay: str, tokens: RunTokens, upstream: Upstream, usage_log: UsageLog
) -> None:
    scripted, url = upstream
    own = ProviderCreds(
        openai=Credential(SecretStr("sk-or-key"), base_url=url + "/v1"), provider="openrouter"
    )
    token = tokens.issue("run1", "coll", own)
    assert post(relay, token, request_body(stream=False)).status_code == 200
    assert scripted.seen[-1].path == "/v1/responses"
    assert scripted.seen[-1].headers["authorization"] == "Bearer sk-or-key"
    wait_for(lambda: len(usage_log) >= 1)
    assert usage_log == [("run1", dataclasses.replace(EXPECTED, provider="openrouter"))]


@pytest.mark.parametrize("case", ["missing", "unknown", "revoked", "x-api-key-unknown"])
def test_bad_tokens_get_401_and_nothing_is_forwarded(
    relay: str, tokens: RunTokens, upstream: Upstream, case: str
) -> None:
    token = tokens.issue("run1", "coll")
    headers: dict[str, str] = {}
    if case == "revoked":
        tokens.revoke("run1")
        headers["authorization"] = f"Bearer {token}"
    elif case == "unknown":
        headers["authorization"] = "Bearer jrt-forged"
    elif case == "x-api-key-unknown":
        headers["x-api-key"] = "jrt-forged"
    response = post(relay, None, request_body(), **headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
    assert response.headers["x-should-retry"] == "false"
    assert upstream[0].seen == []


def test_a_token_is_valid_only_on_its_runs_own_relay(
    relay: str, tokens: RunTokens, upstream: Upstream
) -> None:
    # A Claude Code run's credentials name the Anthropic relay only: its token cannot spend
    # the server's OpenAI key.
    claude_run = ProviderCreds(anthropic=Credential(SecretStr("sk-ant")), provider="anthropic")
    response = post(relay, tokens.issue("run1", "coll", claude_run), request_body())
    assert response.status_code == 401
    assert "not valid for the openai relay" in response.json()["error"]["message"]
    assert upstream[0].seen == []


def test_usage_is_reported_once_per_model_call(
    relay: str, tokens: RunTokens, usage_log: UsageLog
) -> None:
    hooked: list[ModelUsage] = []

    async def hook(usage: ModelUsage) -> None:
        hooked.append(usage)

    token = tokens.issue("run1", "coll", on_usage=hook)
    post(relay, token, request_body())
    post(relay, token, request_body(stream=False, tool_output=True))
    wait_for(lambda: len(usage_log) >= 2 and len(hooked) >= 2)
    assert usage_log == [("run1", EXPECTED), ("run1", EXPECTED)]
    assert hooked == [EXPECTED, EXPECTED]
    assert EXPECTED.prompt_tokens == USAGE["input_tokens"]


@pytest.mark.anyio
async def test_an_agent_going_away_cancels_the_upstream_call(
    relay: str, tokens: RunTokens, upstream: Upstream, usage_log: UsageLog
) -> None:
    scripted, _ = upstream
    scripted.mode = "hang"
    headers = {"authorization": f"Bearer {tokens.issue('run1', 'coll')}"}
    async with httpx.AsyncClient(timeout=10) as client:
        request = client.build_request(
            "POST", relay + "/v1/responses", json=request_body(), headers=headers
        )
        response = await client.send(request, stream=True)
        assert response.status_code == 200
        async for piece in response.aiter_bytes():
            assert b"response.created" in piece
            break
        await response.aclose()
    deadline = time.monotonic() + 5
    while scripted.seen[-1].disconnected is None and time.monotonic() < deadline:
        await anyio.sleep(0.02)
    assert scripted.seen[-1].disconnected is not None
    await anyio.sleep(0.1)
    assert usage_log == []  # the Responses API reports usage only when a call completes


@pytest.mark.parametrize("stream", [True, False])
def test_upstream_down_is_a_502(make_relay: RelayFactory, tokens: RunTokens, stream: bool) -> None:
    token = tokens.issue("run1", "coll")
    with make_relay(openai_base_url=f"http://127.0.0.1:{free_port()}/v1") as relay:
        response = post(relay, token, request_body(stream=stream))
    assert response.status_code == 502
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "upstream_unavailable")
    assert "unreachable" in error["message"]


@pytest.mark.parametrize("status", [401, 500])
@pytest.mark.parametrize("stream", [True, False])
def test_upstream_errors_keep_status_and_body(
    relay: str, tokens: RunTokens, upstream: Upstream, status: int, stream: bool
) -> None:
    scripted, _ = upstream
    scripted.mode, scripted.error_status = "error", status
    response = post(relay, tokens.issue("run1", "coll"), request_body(stream=stream))
    assert response.status_code == status
    assert response.json()["error"]["message"] == f"scripted {status}"


def test_a_truncated_stream_ends_with_response_failed(
    relay: str, tokens: RunTokens, upstream: Upstream, usage_log: UsageLog
) -> None:
    scripted, _ = upstream
    scripted.mode = "truncate"
    response = post(relay, tokens.issue("run1", "coll"), request_body())
    assert response.status_code == 200
    last = response.content.decode().rstrip("\n").split("\n\n")[-1]
    assert last.startswith("event: response.failed\n")
    failed = sse_events(last.encode())[0]
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["code"] == "upstream_error"
    assert "before it was complete" in failed["response"]["error"]["message"]
    assert usage_log == []


def test_no_key_configured_is_a_clear_500(
    make_relay: RelayFactory, tokens: RunTokens, upstream: Upstream
) -> None:
    with make_relay(openai_api_key=None) as relay:
        response = post(relay, tokens.issue("run1", "coll"), request_body())
    assert response.status_code == 500
    assert "no OpenAI API key" in response.json()["error"]["message"]
    assert upstream[0].seen == []


def test_invalid_json_is_a_400(relay: str, tokens: RunTokens, upstream: Upstream) -> None:
    headers = {"authorization": f"Bearer {tokens.issue('run1', 'coll')}"}
    response = httpx.post(relay + "/v1/responses", content=b"[1]", headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert upstream[0].seen == []


def test_usage_reader_reads_terminal_events_only_and_ignores_garbage() -> None:
    reader = UsageReader("gpt-x")
    assert reader.result(complete=True) is None
    usage = {"input_tokens": 10, "output_tokens": 4, "input_tokens_details": {"cached_tokens": 12}}
    reader.feed_sse(
        b'data: {"type":"response.created","response":{"model":"gpt-y","usage":{"input_tokens":1}}}'
        b"\r\n\r\nevent: response.completed\r\ndata: {not json\r\n\r\n"
        b'data: {"type": "response.incomplete", "response": {"model": "gpt-z", "usage": '
        + json.dumps(usage).encode()
        + b"}}\n\n"
    )
    # Cached tokens never exceed the prompt; missing details count as zero.
    assert reader.result(complete=False) == ModelUsage(
        "openai",
        "gpt-z",
        input_tokens=0,
        output_tokens=4,
        cache_read_input_tokens=10,
        complete=False,
    )


def test_dialect_knows_how_streams_end() -> None:
    dialect = ResponsesDialect()
    assert dialect.is_end(b'event: response.completed\ndata: {"type":"response.completed"}\n\n')
    assert dialect.is_end(b'data: {"type": "response.failed"}\n\n')
    assert dialect.is_end(b"event: error\ndata: {}\n\n")
    assert not dialect.is_end(b'event: response.output_item.done\ndata: {"type":"x"}\n\n')
    failed = dialect.in_band_error(UpstreamUnavailable("gone").body())
    assert sse_events(failed)[0]["response"]["error"] == {
        "code": "upstream_unavailable",
        "message": "gone",
    }


def test_settings_check_the_openai_base_url() -> None:
    assert Settings(openai_base_url="http://up.example/v1/").openai_base_url == (
        "http://up.example/v1"
    )
    with pytest.raises(ValidationError):
        Settings(openai_base_url="ftp://up.example")
