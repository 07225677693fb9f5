"""Passthrough relay: live proxy, live scripted upstream, the real openai client."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.api.conftest import ProxyFactory
from tests.support.openapi import validate, validate_sse_chunks
from tests.support.scripted_openai import ScriptedUpstream

Upstream = tuple[ScriptedUpstream, str]
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "hello there general kenobi"}
]


def client(proxy: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy + "/v1", api_key="unused", max_retries=0)


def test_streaming_with_the_sync_client(proxy: str) -> None:
    stream = client(proxy).chat.completions.create(
        model="echo", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "hello there general kenobi"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


@pytest.mark.anyio
async def test_streaming_and_plain_with_the_async_client(proxy: str) -> None:
    async with openai.AsyncOpenAI(base_url=proxy + "/v1", api_key="x", max_retries=0) as aclient:
        completion = await aclient.chat.completions.create(model="echo", messages=MESSAGES)
        assert completion.choices[0].message.content == "hello there general kenobi"
        assert completion.usage is not None and completion.usage.total_tokens == 8
        stream = await aclient.chat.completions.create(model="echo", messages=MESSAGES, stream=True)
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(pieces) == "hello there general kenobi"


def test_body_forwarded_untouched_and_jetty_block_removed(proxy: str, upstream: Upstream) -> None:
    scripted, _ = upstream
    raw = b'{"model":"echo","messages":[{"role":"user","content":"a b"}],"x_custom":  [1, 2]}'
    response = httpx.post(proxy + "/v1/chat/completions", content=raw)
    assert response.status_code == 200
    assert scripted.seen[-1].body == raw  # byte for byte, unknown fields and spacing included

    response = httpx.post(
        proxy + "/v1/chat/completions",
        json={"model": "echo", "messages": MESSAGES, "seed": 7, "jetty": {"task": "t1"}},
    )
    assert response.status_code == 200
    forwarded = scripted.seen[-1].json
    assert "jetty" not in forwarded
    assert forwarded["seed"] == 7


def test_upstream_gets_its_own_key_never_the_clients(proxy: str, upstream: Upstream) -> None:
    scripted, _ = upstream
    client(proxy).chat.completions.create(model="echo", messages=MESSAGES)
    assert scripted.seen[-1].headers["authorization"] == "Bearer sk-upstream-secret"


def test_runbook_requests_never_reach_the_upstream(proxy: str, upstream: Upstream) -> None:
    scripted, _ = upstream
    response = httpx.post(
        proxy + "/v1/chat/completions",
        json={
            "model": "claude-x",
            "messages": [{"role": "system", "content": "# Runbook"}, *MESSAGES],
            "jetty": {"runbook": True},
        },
    )
    # This server has no default image: the run is refused before anything starts.
    assert response.status_code == 400
    body = response.json()
    validate("ErrorResponse", body)
    assert body["error"]["param"] == "jetty.image"
    assert response.headers["x-should-retry"] == "false"
    assert scripted.seen == []


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        # Strict JSON: what the json module would let through is not passed on.
        (b'{"model": "echo", "messages": [], "temperature": NaN}', None),
        (b'{"messages": []}', "model"),
        (b'{"model": null, "messages": []}', "model"),
        (b'{"model": 7, "messages": []}', "model"),
        (b'{"model": "echo"}', "messages"),
        (b'{"model": "echo", "messages": "hi"}', "messages"),
        (b'{"model": "echo", "messages": [], "stream": 1}', "stream"),
        (b'{"model": "echo", "messages": [], "stream": "yes"}', "stream"),
        (b'{"model": "echo", "messages": [], "jetty": "x"}', "jetty"),
        (b'{"model": "echo", "messages": [], "jetty": {"collection": ""}}', "jetty.collection"),
    ],
)
def test_bad_requests_are_400_naming_the_field(
    proxy: str, upstream: Upstream, content: bytes, param: str | None
) -> None:
    response = httpx.post(proxy + "/v1/chat/completions", content=content)
    assert response.status_code == 400
    body = response.json()
    validate("ErrorResponse", body)
    assert body["error"]["param"] == param
    if param is not None and "." not in param:
        assert body["error"]["message"].startswith(f"Invalid value for '{param}': ")
    assert response.headers["x-should-retry"] == "false"
    assert upstream[0].seen == []


def test_body_over_the_limit_is_413_declared_or_chunked(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    big = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "x" * 5000}]})
    with make_proxy(max_body_bytes=1000) as proxy:
        response = httpx.post(proxy + "/v1/chat/completions", content=big)
        assert response.status_code == 413
        validate("ErrorResponse", response.json())

        def chunked() -> object:
            for i in range(0, len(big), 500):
                yield big[i : i + 500].encode()

        response = httpx.post(proxy + "/v1/chat/completions", content=chunked())  # type: ignore[arg-type]
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
    assert upstream[0].seen == []


def test_unreachable_upstream_is_502(make_proxy: ProxyFactory) -> None:
    with make_proxy(upstream_url="http://127.0.0.1:9/v1") as proxy:
        for stream in (False, True):
            response = httpx.post(
                proxy + "/v1/chat/completions",
                json={"model": "echo", "messages": MESSAGES, "stream": stream},
            )
            assert response.status_code == 502
            validate("ErrorResponse", response.json())


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("status", [400, 401, 429, 500, 503])
def test_upstream_errors_keep_their_status(proxy: str, status: int, stream: bool) -> None:
    response = httpx.post(
        proxy + "/v1/chat/completions",
        json={"model": f"error-{status}", "messages": MESSAGES, "stream": stream},
    )
    assert response.status_code == status
    body = response.json()
    validate("ErrorResponse", body)
    assert body["error"]["message"] == f"scripted {status}"


def test_sdk_sees_upstream_rate_limit_as_its_own_error(proxy: str) -> None:
    with pytest.raises(openai.RateLimitError):
        client(proxy).chat.completions.create(model="error-429", messages=MESSAGES)


def test_failure_mid_stream_is_an_in_band_error_then_done(proxy: str) -> None:
    with httpx.stream(
        "POST",
        proxy + "/v1/chat/completions",
        json={"model": "break-after-2", "messages": MESSAGES, "stream": True},
    ) as response:
        assert response.status_code == 200
        body = response.read().decode()
    events = [line for line in body.splitlines() if line.startswith("data:")]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))
    validate("ErrorResponse", error)
    assert "mid-response" in error["error"]["message"]
    assert '"finish_reason": "stop"' not in body and '"finish_reason":"stop"' not in body
    chunks = validate_sse_chunks(body)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "hello there "

    with pytest.raises(openai.APIError):
        list(
            client(proxy).chat.completions.create(
                model="break-after-2", messages=MESSAGES, stream=True
            )
        )


def test_stream_that_ends_without_done_is_reported(proxy: str) -> None:
    response = httpx.post(
        proxy + "/v1/chat/completions",
        json={"model": "truncate", "messages": MESSAGES, "stream": True},
    )
    lines = [line for line in response.text.splitlines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    assert "before it was complete" in json.loads(lines[-2][5:])["error"]["message"]


def _sse_lines(proxy: str, model: str) -> tuple[httpx.Response, list[str]]:
    """A streamed completion of ``model``: the response and its non-empty lines."""
    body = {"model": model, "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", proxy + "/v1/chat/completions", json=body) as response:
        return response, [line for line in response.iter_lines() if line]


def test_keepalive_pings_start_before_the_first_byte(make_proxy: ProxyFactory) -> None:
    with make_proxy(keepalive_seconds=0.2) as proxy:
        response, lines = _sse_lines(proxy, "slow-1.0")
    assert response.status_code == 200
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["content-type"].startswith("text/event-stream")
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert first_data >= 3
    assert all(line == ": ping" for line in lines[:first_data])
    assert not any(line.startswith("id:") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_no_ping_follows_the_end_of_the_stream(make_proxy: ProxyFactory) -> None:
    # The upstream relays [DONE] but ends its response only later: the stream is over for
    # the client at [DONE], whatever keepalive timer runs out before the response ends.
    # (Pings while the upstream is still sending are fine: on a busy machine even its first
    # byte may take longer than the keepalive.)
    with make_proxy(keepalive_seconds=0.1) as proxy:
        _, lines = _sse_lines(proxy, "linger-0.5")
    assert lines[-1] == "data: [DONE]", lines
    assert lines.count("data: [DONE]") == 1


def test_sdk_tolerates_pings(make_proxy: ProxyFactory) -> None:
    with make_proxy(keepalive_seconds=0.1) as proxy:
        stream = client(proxy).chat.completions.create(
            model="slow-0.5", messages=MESSAGES, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "hello there general kenobi"


def _wait_for_disconnect(scripted: ScriptedUpstream, closed_at: float) -> float:
    deadline = time.monotonic() + 5
    while scripted.seen[-1].disconnected is None and time.monotonic() < deadline:
        time.sleep(0.01)
    disconnected = scripted.seen[-1].disconnected
    assert disconnected is not None, "the upstream never saw the proxy go away"
    return disconnected - closed_at


@pytest.mark.parametrize(
    ("model", "stream"), [("hang", True), ("hang-after-first", True), ("hang", False)]
)
def test_client_disconnect_cancels_the_upstream_at_once(
    proxy: str, upstream: Upstream, model: str, stream: bool
) -> None:
    scripted, _ = upstream
    with httpx.Client(timeout=httpx.Timeout(5, read=0.5)) as http:
        request = http.build_request(
            "POST",
            proxy + "/v1/chat/completions",
            json={"model": model, "messages": MESSAGES, "stream": stream},
        )
        try:
            response = http.send(request, stream=True)
            if model == "hang-after-first":
                assert next(response.iter_lines()).startswith("data:")
            response.close()
        except httpx.ReadTimeout:
            assert not stream  # only a non-streaming call waits for the whole body
        closed_at = time.monotonic()
    assert scripted.seen, "the request never reached the upstream"
    assert _wait_for_disconnect(scripted, closed_at) < 1.0
