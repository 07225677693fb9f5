"""The Gemini API relay: a live relay, a live scripted upstream, real HTTP in between."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pydantic import SecretStr, ValidationError

from proxy.relay.gemini import GeminiDialect, UsageReader
from proxy.relay.tokens import Credential, ModelUsage, ProviderCreds, RunTokens
from proxy.settings import Settings
from tests.relay.conftest import REAL_KEY, RelayFactory, UsageLog
from tests.relay.test_anthropic import wait_for
from tests.support.live import free_port, serve
from tests.support.scripted_gemini import COUNT_TOKENS, USAGE, ScriptedGemini

Upstream = tuple[ScriptedGemini, str]
MODEL = "gemini-2.5-pro"
STREAM = f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
GENERATE = f"/v1beta/models/{MODEL}:generateContent"
EXPECTED = ModelUsage(
    "google",
    MODEL,
    input_tokens=29 - 7,
    output_tokens=13 + 4,
    cache_read_input_tokens=7,
    reasoning_tokens=4,
)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    scripted = ScriptedGemini()
    with serve(scripted.app()) as url:
        yield scripted, url


@pytest.fixture
def make_settings(tmp_path: Path, upstream: Upstream) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        fields: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "google_base_url": upstream[1],
            "google_api_key": REAL_KEY,
        }
        return Settings(**{**fields, **overrides})

    return build


def request_body(*, tool_output: bool = False) -> dict[str, Any]:
    contents: list[dict[str, Any]] = [{"role": "user", "parts": [{"text": "write hello.txt"}]}]
    if tool_output:
        contents += [
            {"role": "model", "parts": [{"functionCall": {"name": "run_shell_command"}}]},
            {
                "role": "user",
                "parts": [{"functionResponse": {"name": "run_shell_command", "response": {}}}],
            },
        ]
    return {"contents": contents, "generationConfig": {"temperature": 1}}


def post(relay: str, token: str | None, path: str = STREAM, **kwargs: Any) -> httpx.Response:
    headers = {"x-goog-api-key": token} if token is not None else {}
    kwargs.setdefault("json", request_body())
    return httpx.post(relay + path, headers=headers, timeout=10, **kwargs)


def frames(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]


def test_a_stream_passes_through_byte_for_byte(
    relay: str, tokens: RunTokens, upstream: Upstream
) -> None:
    scripted, _ = upstream
    response = post(relay, tokens.issue("run1", "coll"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-goog-request-id"] == "req_scripted"
    assert response.content == bytes(scripted.seen[-1].sent)
    sent = frames(response.content)
    call = sent[-1]["candidates"][0]["content"]["parts"][0]["functionCall"]
    assert call["name"] == "run_shell_command"
    assert "command" in call["args"]
    assert sent[-1]["candidates"][0]["finishReason"] == "STOP"


def test_generate_content_passes_through_untouched(relay: str, tokens: RunTokens) -> None:
    token = tokens.issue("run1", "coll")
    response = post(relay, token, GENERATE, json=request_body(tool_output=True))
    assert response.status_code == 200
    parts = response.json()["candidates"][0]["content"]["parts"]
    assert "".join(part["text"] for part in parts) == "Done: wrote hello.txt"


@pytest.mark.parametrize("how", ["header", "query"])
def test_upstream_gets_the_real_key_and_never_the_run_token(
    relay: str, tokens: RunTokens, upstream: Upstream, how: str
) -> None:
    scripted, _ = upstream
    token = tokens.issue("run1", "coll")
    body = json.dumps(request_body()).encode()
    headers = {
        "content-type": "application/json",
        "x-goog-api-client": "google-genai-sdk/1.30.0",
        "x-goog-user-project": "agent-project",
        "authorization": "Bearer something-else",
    }
    path = STREAM
    if how == "header":
        headers["x-goog-api-key"] = token
    else:
        path = f"/v1beta/models/{MODEL}:streamGenerateContent?key={token}&alt=sse"
    response = httpx.post(relay + path, content=body, headers=headers)
    assert response.status_code == 200

    seen = scripted.seen[-1]
    assert seen.path == f"/v1beta/models/{MODEL}:streamGenerateContent"
    assert seen.query == "alt=sse"
    assert seen.headers["x-goog-api-key"] == REAL_KEY
    assert seen.headers["x-goog-api-client"] == "google-genai-sdk/1.30.0"
    assert "authorization" not in seen.headers
    assert "x-goog-user-project" not in seen.headers
    assert all(token not in value for value in seen.headers.values())
    assert seen.body == body


def test_a_runs_own_key_replaces_the_servers(
    relay: str, tokens: RunTokens, upstream: Upstream
) -> None:
    own = ProviderCreds(google=Credential(SecretStr("g-collection")))
    assert post(relay, tokens.issue("run1", "coll", own)).status_code == 200
    assert upstream[0].seen[-1].headers["x-goog-api-key"] == "g-collection"


@pytest.mark.parametrize("case", ["missing", "unknown", "revoked", "query-unknown", "bearer"])
def test_bad_tokens_get_401_and_nothing_is_forwarded(
    relay: str, tokens: RunTokens, upstream: Upstream, case: str
) -> None:
    token = tokens.issue("run1", "coll")
    path, headers = STREAM, {}
    if case == "revoked":
        tokens.revoke("run1")
        headers["x-goog-api-key"] = token
    elif case == "unknown":
        headers["x-goog-api-key"] = "jrt-forged"
    elif case == "query-unknown":
        path += "&key=jrt-forged"
    elif case == "bearer":  # not a way the Gemini API takes keys
        headers["authorization"] = f"Bearer {token}"
    response = httpx.post(relay + path, json=request_body(), headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["status"] == "UNAUTHENTICATED"
    assert response.json()["error"]["code"] == 401
    assert upstream[0].seen == []


def test_unknown_methods_are_a_404(relay: str, tokens: RunTokens, upstream: Upstream) -> None:
    token = tokens.issue("run1", "coll")
    for path in (f"/v1beta/models/{MODEL}:embedContent", "/v1beta/models/:generateContent"):
        response = post(relay, token, path)
        assert response.status_code == 404
        assert response.json()["error"]["status"] == "NOT_FOUND"
    assert upstream[0].seen == []


def test_usage_is_reported_once_per_model_call(
    relay: str, tokens: RunTokens, upstream: Upstream, usage_log: UsageLog
) -> None:
    hooked: list[ModelUsage] = []

    async def hook(usage: ModelUsage) -> None:
        hooked.append(usage)

    token = tokens.issue("run1", "coll", on_usage=hook)
    post(relay, token)
    post(relay, token, GENERATE)
    # Without alt=sse the stream is a JSON array, relayed whole.
    array = post(relay, token, f"/v1beta/models/{MODEL}:streamGenerateContent")
    assert isinstance(array.json(), list)
    counted = post(relay, token, f"/v1beta/models/{MODEL}:countTokens")
    assert counted.json() == COUNT_TOKENS
    assert upstream[0].seen[-1].headers["x-goog-api-key"] == REAL_KEY
    wait_for(lambda: len(usage_log) >= 3 and len(hooked) >= 3)
    assert usage_log == [("run1", EXPECTED)] * 3
    assert hooked == [EXPECTED] * 3
    assert EXPECTED.prompt_tokens == USAGE["promptTokenCount"]


@pytest.mark.anyio
async def test_an_agent_going_away_cancels_the_upstream_call(
    relay: str, tokens: RunTokens, upstream: Upstream, usage_log: UsageLog
) -> None:
    scripted, _ = upstream
    scripted.mode = "hang"
    headers = {"x-goog-api-key": tokens.issue("run1", "coll")}
    async with httpx.AsyncClient(timeout=10) as client:
        request = client.build_request("POST", relay + STREAM, json=request_body(), headers=headers)
        response = await client.send(request, stream=True)
        assert response.status_code == 200
        async for piece in response.aiter_bytes():
            assert b"candidates" in piece
            break
        await response.aclose()
    deadline = time.monotonic() + 5
    while (scripted.seen[-1].disconnected is None or not usage_log) and (
        time.monotonic() < deadline
    ):
        await anyio.sleep(0.02)
    assert scripted.seen[-1].disconnected is not None
    # The first frame carried the prompt count; the call did not complete.
    assert [(u.input_tokens, u.complete) for _, u in usage_log] == [(29, False)]


@pytest.mark.parametrize("path", [STREAM, GENERATE])
def test_upstream_down_is_a_502(make_relay: RelayFactory, tokens: RunTokens, path: str) -> None:
    token = tokens.issue("run1", "coll")
    with make_relay(google_base_url=f"http://127.0.0.1:{free_port()}") as relay:
        response = post(relay, token, path)
    assert response.status_code == 502
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (502, "UNAVAILABLE")
    assert "unreachable" in error["message"]


@pytest.mark.parametrize("status", [401, 500])
@pytest.mark.parametrize("path", [STREAM, GENERATE])
def test_upstream_errors_keep_status_and_body(
    relay: str, tokens: RunTokens, upstream: Upstream, status: int, path: str
) -> None:
    scripted, _ = upstream
    scripted.mode, scripted.error_status = "error", status
    response = post(relay, tokens.issue("run1", "coll"), path)
    assert response.status_code == status
    assert response.json()["error"]["message"] == f"scripted {status}"
    assert response.json()["error"]["code"] == status


def test_a_truncated_stream_ends_with_an_error_frame(
    relay: str, tokens: RunTokens, upstream: Upstream, usage_log: UsageLog
) -> None:
    upstream[0].mode = "truncate"
    response = post(relay, tokens.issue("run1", "coll"))
    assert response.status_code == 200
    error = frames(response.content)[-1]["error"]
    assert (error["code"], error["status"]) == (502, "UNAVAILABLE")
    wait_for(lambda: usage_log)
    assert usage_log[0][1].complete is False


def test_no_key_configured_is_a_clear_500(
    make_relay: RelayFactory, tokens: RunTokens, upstream: Upstream
) -> None:
    with make_relay(google_api_key=None) as relay:
        response = post(relay, tokens.issue("run1", "coll"))
    assert response.status_code == 500
    assert "no Google API key" in response.json()["error"]["message"]
    assert upstream[0].seen == []


def test_invalid_json_is_a_400(relay: str, tokens: RunTokens, upstream: Upstream) -> None:
    response = post(relay, tokens.issue("run1", "coll"), json=None, content=b"{nope")
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert upstream[0].seen == []


def test_usage_reader_takes_the_last_numbers_and_ignores_garbage() -> None:
    reader = UsageReader("gemini-x")
    assert reader.result(complete=True) is None
    reader.feed_sse(
        b'data: {"usageMetadata": {"promptTokenCount": 5}, "modelVersion": "gemini-y"}\r\n\r\n'
        b'data: {"usageMetadata": not json}\r\n\r\n'
        b'data: {"usageMetadata": {"promptTokenCount": 8, "toolUsePromptTokenCount": 2,'
        b' "candidatesTokenCount": 3, "cachedContentTokenCount": 4, "thoughtsTokenCount": true}}'
        b"\r\n\r\n"
    )
    assert reader.result(complete=True) == ModelUsage(
        "google", "gemini-y", input_tokens=6, output_tokens=3, cache_read_input_tokens=4
    )
    reader.feed_json(b"[{}, 3, ")
    assert reader.result(complete=True) is not None


def test_dialect_knows_how_streams_end() -> None:
    dialect = GeminiDialect()
    assert dialect.is_end(b'data: {"candidates": [{"finishReason": "STOP"}]}\r\n\r\n')
    assert dialect.is_end(b'data: {"promptFeedback": {"blockReason": "SAFETY"}}\n\n')
    assert dialect.is_end(b'data: {"error": {"code": 500}}\n\n')
    assert not dialect.is_end(b'data: {"candidates": [{"content": {}}]}\n\n')


def test_settings_check_the_google_base_url() -> None:
    assert Settings(google_base_url="http://g.example/").google_base_url == "http://g.example"
    with pytest.raises(ValidationError):
        Settings(google_base_url="g.example")


def test_a_resumed_session_s_repeated_tool_results_are_sent_once(
    relay: str, tokens: RunTokens, upstream: Upstream
) -> None:
    # Gemini CLI 0.61.0 replays each tool result of a resumed session twice (gemini-cli#29365).
    scripted, _ = upstream
    response_part = {
        "functionResponse": {"id": "call_1", "name": "run_shell_command", "response": {}}
    }
    body = request_body(tool_output=True)
    body["contents"][1]["parts"][0]["functionCall"]["id"] = "call_1"
    body["contents"][2]["parts"] = [response_part, response_part, response_part]
    body["contents"].append({"role": "user", "parts": [{"text": "and now?"}]})
    response = post(relay, tokens.issue("run1", "coll"), json=body)
    assert response.status_code == 200
    sent = scripted.seen[-1].json["contents"]
    assert sent[2]["parts"] == [response_part]
    assert [c["parts"] for c in sent[:2] + sent[3:]] == [
        c["parts"] for c in body["contents"][:2] + body["contents"][3:]
    ]


def test_other_bodies_pass_through_unchanged(
    relay: str, tokens: RunTokens, upstream: Upstream
) -> None:
    scripted, _ = upstream
    raw = json.dumps(request_body(tool_output=True), indent=3).encode()
    headers = {"x-goog-api-key": tokens.issue("run1", "coll"), "content-type": "application/json"}
    response = httpx.post(relay + STREAM, content=raw, headers=headers, timeout=10)
    assert response.status_code == 200
    assert scripted.seen[-1].body == raw
