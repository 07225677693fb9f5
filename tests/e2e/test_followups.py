"""Follow-up turns from a chat UI: the whole history is resent, and the agent session continues.

Real parts: the Docker engine, the offline test image, the pinned CLIs (Claude Code, Codex,
Gemini CLI), scripted model servers (Anthropic, OpenAI Responses, Gemini) that answer each user
prompt of the conversation with its own tool call and answer, and requests shaped as Open WebUI
sends them (``stream: true``, ``user``, the whole history with the earlier answer exactly as it
was streamed; a preset model for Claude Code, a ``jetty`` block for the others).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import httpx
import pytest

from proxy.presets import Preset
from tests.e2e.conftest import TEST_IMAGE, ProxyFactory, trajectory
from tests.support.openapi import validate_sse_chunks
from tests.support.scripted_anthropic import ScriptedAnthropic
from tests.support.scripted_gemini import ScriptedGemini
from tests.support.scripted_responses import ScriptedResponses

pytestmark = [pytest.mark.docker, pytest.mark.agents]

RUNBOOK = "# Notes\n\nDo what the user asks; keep notes in /app/results/notes.txt."
PRESETS = {
    "notes": Preset(
        model="claude-sonnet-4-6",
        runbook=RUNBOOK,
        jetty={"collection": "acme", "task": "chat", "image": TEST_IMAGE, "timeout_sec": 120},
    )
}
TURNS = [
    (
        "mkdir -p /app/results && echo first > /app/results/notes.txt && echo kept > /app/scratch",
        "Wrote notes.txt with the first line.",
    ),
    (
        "echo second >> /app/results/notes.txt && cat /app/scratch 2>&1 | tee /app/results/s.txt",
        "Added the second line to notes.txt.",
    ),
]
HEADERS = {"X-OpenWebUI-Chat-Id": "c0ffee", "X-OpenWebUI-User-Name": "alice"}
MODELS = {"codex": "gpt-5.2-codex", "gemini-cli": "gemini-2.5-pro"}
# Where each scripted server's model calls go, and the field holding the conversation.
MODEL_CALLS = {
    "codex": ("/v1/responses", "input"),
    "gemini-cli": (":streamGenerateContent", "contents"),
}
FIRST = [{"role": "user", "content": "Start my notes."}]


def _turn(proxy: str, messages: list[dict[str, Any]]) -> tuple[str, str, str]:
    """One chat-UI request; the run id, the answer as the UI shows it, and the reasoning."""
    body = {"model": "jetty/notes", "stream": True, "user": "alice", "messages": messages}
    return _send(proxy, body)


def _agent_turn(proxy: str, agent: str, messages: list[dict[str, Any]]) -> tuple[str, str, str]:
    """The same chat-UI request with a ``jetty`` block naming the agent instead of a preset."""
    body = {
        "model": MODELS[agent],
        "stream": True,
        "user": "alice",
        "messages": [{"role": "system", "content": RUNBOOK}, *messages],
        "jetty": {
            "runbook": True,
            "agent": agent,
            "collection": "acme",
            "task": "chat",
            "image": TEST_IMAGE,
            "timeout_sec": 120,
        },
    }
    return _send(proxy, body)


def _second(first_answer: str) -> list[dict[str, Any]]:
    """The history a chat UI resends for the second turn."""
    return [
        *FIRST,
        {"role": "assistant", "content": first_answer},
        {"role": "user", "content": "Add a second line."},
    ]


def _send(proxy: str, body: dict[str, Any]) -> tuple[str, str, str]:
    response = httpx.post(proxy + "/v1/chat/completions", json=body, headers=HEADERS, timeout=180)
    assert response.status_code == 200, response.text
    chunks = validate_sse_chunks(response.text)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    content = "".join(d.get("content") or "" for d in deltas)
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    return response.headers["x-jetty-trajectory-id"], content, reasoning


@pytest.mark.parametrize("keep", [True, False], ids=["same-sandbox", "restored-sandbox"])
def test_second_turn_continues_the_agent_session_and_its_files(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str], keep: bool
) -> None:
    scripted = anthropic[0]
    scripted.turns = TURNS
    with make_proxy(presets=PRESETS, keep_sandbox_seconds=600 if keep else 0) as proxy:
        first_id, first_answer, _ = _turn(proxy, FIRST)
        assert TURNS[0][1] in first_answer
        assert f"Jetty run [{first_id}]" in first_answer  # the visible link to the run
        seen_before = len(scripted.seen)

        second_id, second_answer, reasoning = _turn(proxy, _second(first_answer))
        # The agent resumed its session: its model call carries the first turn.
        second_calls = [
            s.json["messages"] for s in scripted.seen[seen_before:] if s.path == "/v1/messages"
        ]
        _check_second_turn(proxy, keep, (first_id, second_id), second_answer, reasoning)
        _check_resumed(second_calls)


@pytest.mark.parametrize("keep", [True, False], ids=["same-sandbox", "restored-sandbox"])
def test_a_turn_that_took_over_a_warm_agent_is_continued_too(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str], keep: bool
) -> None:
    """The first turn takes over the Claude Code a warm sandbox started ahead; its session
    and files carry on as a cold turn's do."""
    scripted = anthropic[0]
    scripted.turns = TURNS
    warm = {"notes": PRESETS["notes"].model_copy(update={"warm": 1})}
    with make_proxy(presets=warm, keep_sandbox_seconds=600 if keep else 0) as proxy:
        deadline = time.monotonic() + 120
        while (
            'jetty_proxy_warm_sandboxes_ready{pool="preset:notes"} 1.0'
            not in httpx.get(proxy + "/metrics").text
        ):
            assert time.monotonic() < deadline, "the pool did not fill"
            time.sleep(0.1)
        first_id, first_answer, first_reasoning = _turn(proxy, FIRST)
        assert "its agent started ahead" in first_reasoning
        assert TURNS[0][1] in first_answer
        seen_before = len(scripted.seen)
        second_id, second_answer, reasoning = _turn(proxy, _second(first_answer))
        second_calls = [
            s.json["messages"] for s in scripted.seen[seen_before:] if s.path == "/v1/messages"
        ]
        _check_second_turn(proxy, keep, (first_id, second_id), second_answer, reasoning)
        _check_resumed(second_calls)


@pytest.mark.parametrize("keep", [True, False], ids=["same-sandbox", "restored-sandbox"])
@pytest.mark.parametrize("agent", ["codex", "gemini-cli"])
def test_codex_and_gemini_continue_their_sessions_too(
    make_proxy: ProxyFactory,
    responses: tuple[ScriptedResponses, str],
    gemini: tuple[ScriptedGemini, str],
    agent: str,
    keep: bool,
) -> None:
    scripted = responses[0] if agent == "codex" else gemini[0]
    scripted.turns = TURNS
    path, field = MODEL_CALLS[agent]
    with make_proxy(keep_sandbox_seconds=600 if keep else 0) as proxy:
        first_id, first_answer, _ = _agent_turn(proxy, agent, FIRST)
        assert TURNS[0][1] in first_answer
        assert f"Jetty run [{first_id}]" in first_answer
        first_session = trajectory(proxy, "acme", "chat", first_id)["session"]
        assert first_session["agent_session_id"]
        seen_before = len(scripted.seen)

        second_id, second_answer, reasoning = _agent_turn(proxy, agent, _second(first_answer))
        second_calls = [s.json[field] for s in scripted.seen[seen_before:] if s.path.endswith(path)]
        record = _check_second_turn(proxy, keep, (first_id, second_id), second_answer, reasoning)
        _check_resumed(second_calls)
        # The CLI continued the same session (Codex thread, Gemini CLI chat).
        assert record["session"]["agent_session_id"] == first_session["agent_session_id"]


def _check_second_turn(
    proxy: str, keep: bool, ids: tuple[str, str], answer: str, reasoning: str
) -> dict[str, Any]:
    """The second turn's answer, files and trajectory; the trajectory."""
    first_id, second_id = ids
    assert second_id != first_id
    record = trajectory(proxy, "acme", "chat", second_id)
    assert record["status"] == "completed", record.get("error")
    assert TURNS[1][1] in answer, answer
    where = "in its sandbox" if keep else "in a new sandbox; restored: agent session"
    assert f"Continuing run {first_id} (turn 2) {where}" in reasoning, reasoning

    # The artifact reflects both turns; the trajectory links them.
    paths = {a["path"]: a for a in record["artifacts"]}
    assert httpx.get(paths["notes.txt"]["url"]).content == b"first\nsecond\n"
    # Files outside /app/results live on only in the same sandbox.
    scratch = httpx.get(paths["s.txt"]["url"]).text
    assert ("kept" in scratch) is keep
    session = record["session"]
    assert session["continues"] == first_id
    assert session["conversation"] == first_id
    assert session["turn"] == 2
    assert session["saved_home"] is True
    assert trajectory(proxy, "acme", "chat", first_id)["session"]["turn"] == 1
    return record


def _check_resumed(second_calls: list[Any]) -> None:
    """The agent resumed its session: the second turn's first model call carries the first."""
    assert second_calls
    earlier = json.dumps(second_calls[0])
    assert TURNS[0][1] in earlier and "Add a second line." in earlier


def test_a_turn_asking_for_another_image_continues_in_a_new_sandbox(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str], docker_host: str
) -> None:
    # The same image under a second name: a different environment as far as the run knows.
    alias = "jetty-test/followup-alias:" + uuid.uuid4().hex[:8]
    repository, tag = alias.split(":")
    engine = httpx.Client(transport=httpx.HTTPTransport(uds=docker_host.removeprefix("unix://")))
    tagged = engine.post(
        f"http://docker/images/{TEST_IMAGE}/tag", params={"repo": repository, "tag": tag}
    )
    assert tagged.status_code == 201, tagged.text
    scripted = anthropic[0]
    scripted.turns = TURNS
    try:
        with make_proxy(presets=PRESETS) as proxy:
            first_id, first_answer, _ = _turn(proxy, FIRST)
            body = {
                "model": "jetty/notes",
                "stream": True,
                "messages": _second(first_answer),
                "jetty": {"image": alias},
            }
            second_id, _, reasoning = _send(proxy, body)
            assert (
                f"Run {first_id} ran in {TEST_IMAGE}, and this turn asks for {alias}" in reasoning
            )
            assert "in a new sandbox; restored: agent session" in reasoning
            record = trajectory(proxy, "acme", "chat", second_id)
            assert record["status"] == "completed"
            assert record["environment"]["image"] == alias
            paths = {a["path"]: a for a in record["artifacts"]}
            assert httpx.get(paths["notes.txt"]["url"]).content == b"first\nsecond\n"
    finally:
        engine.delete(f"http://docker/images/{alias}")
        engine.close()


def test_a_turn_naming_a_live_run_is_a_conflict(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str]
) -> None:
    scripted = anthropic[0]
    scripted.mode = "hang"
    with make_proxy(presets=PRESETS) as proxy:
        body = {
            "model": "jetty/notes",
            "stream": True,
            "messages": [{"role": "user", "content": "Start my notes."}],
        }
        run_id: list[str] = []
        started = threading.Event()

        def first_turn() -> None:
            with httpx.stream(
                "POST", proxy + "/v1/chat/completions", json=body, timeout=120
            ) as response:
                run_id.append(response.headers["x-jetty-trajectory-id"])
                started.set()
                for line in response.iter_lines():
                    if "claude-code started" in line:
                        break  # the run is live; leaving cancels it

        thread = threading.Thread(target=first_turn)
        thread.start()
        assert started.wait(60)
        history = [
            {"role": "user", "content": "Start my notes."},
            {"role": "assistant", "content": f"Working…\n\n_Jetty run [{run_id[0]}](x)_"},
            {"role": "user", "content": "And now?"},
        ]
        response = httpx.post(
            proxy + "/v1/chat/completions", json={**body, "messages": history}, timeout=30
        )
        thread.join(60)
        assert response.status_code == 409
        assert response.headers["x-should-retry"] == "false"
        error = response.json()["error"]
        assert error["code"] == "run_in_progress"
        assert run_id[0] in error["message"]
