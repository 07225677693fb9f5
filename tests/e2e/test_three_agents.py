"""The same runbook on Claude Code, Codex and Gemini CLI: same request, same stream shape.

Each agent runs for real in the offline Debian image, reaching its scripted model server
(Anthropic Messages, OpenAI Responses, Gemini API) only through the proxy's relay.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import PROVIDER_KEY, TEST_IMAGE, ProxyFactory, trajectory
from tests.support.openapi import validate_sse_chunks
from tests.support.scripted_anthropic import ScriptedAnthropic
from tests.support.scripted_gemini import ScriptedGemini
from tests.support.scripted_responses import ScriptedResponses

pytestmark = [pytest.mark.docker, pytest.mark.agents]

AGENTS = {
    "claude-code": "claude-sonnet-4-6",
    "codex": "gpt-5.5",
    "gemini-cli": "gemini-2.5-pro",
}
COMMAND = (
    "mkdir -p /app/results && echo 'hello from the agent' > /app/results/hello.txt"
    " && env > /app/results/env.txt"
)
RUNBOOK = "# Runbook\n\nWrite hello.txt into {{results_dir}}."


def _run(proxy: str, agent: str, *, stream: bool = True) -> httpx.Response:
    body = {
        "model": AGENTS[agent],
        "stream": stream,
        "stream_options": {"include_usage": True},
        "messages": [
            {"role": "system", "content": RUNBOOK},
            {"role": "user", "content": "Execute the runbook."},
        ],
        "jetty": {
            "runbook": True,
            "collection": "acme",
            "task": "agents",
            "image": TEST_IMAGE,
            "timeout_sec": 120,
        },
    }
    return httpx.post(proxy + "/v1/chat/completions", json=body, timeout=180)


def _shape(body: str) -> dict[str, Any]:
    """What kinds of chunks a stream had, and its final metadata."""
    chunks = validate_sse_chunks(body)
    kinds: set[str] = set()
    for chunk in chunks:
        for choice in chunk["choices"]:
            kinds.update(k for k, v in choice["delta"].items() if v)
            if choice.get("finish_reason"):
                kinds.add(f"finish:{choice['finish_reason']}")
            assert "tool_calls" not in choice["delta"]
        if not chunk["choices"] and chunk.get("usage"):
            kinds.add("usage")
    final = next(c for c in reversed(chunks) if c["choices"] and c["choices"][0]["finish_reason"])
    meta = final["jetty"]
    return {
        "kinds": kinds,
        "status": meta["status"],
        "artifacts": sorted(a["path"] for a in meta["artifacts"]),
        "meta_keys": sorted(meta),
        "text": "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        ),
        "reasoning": "".join(
            c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks if c["choices"]
        ),
    }


def test_the_same_runbook_on_all_three_agents(
    make_proxy: ProxyFactory,
    anthropic: tuple[ScriptedAnthropic, str],
    responses: tuple[ScriptedResponses, str],
    gemini: tuple[ScriptedGemini, str],
) -> None:
    servers: dict[str, ScriptedAnthropic | ScriptedResponses | ScriptedGemini] = {
        "claude-code": anthropic[0],
        "codex": responses[0],
        "gemini-cli": gemini[0],
    }
    for server in servers.values():
        server.command = COMMAND
    shapes = {}
    with make_proxy() as proxy:
        for agent in AGENTS:
            response = _run(proxy, agent)
            assert response.status_code == 200, response.text
            shape = _shape(response.text)
            assert shape["status"] == "completed", (agent, shape)
            assert "Done: wrote hello.txt" in shape["text"], agent
            assert f"{agent} started" in shape["reasoning"], agent
            run_id = response.headers["x-jetty-trajectory-id"]
            record = trajectory(proxy, "acme", "agents", run_id)
            assert record["status"] == "completed"
            artifacts = {a["path"]: a["url"] for a in record["artifacts"]}
            assert httpx.get(artifacts["hello.txt"]).content == b"hello from the agent\n"
            env = httpx.get(artifacts["env.txt"]).text
            assert PROVIDER_KEY not in env, agent
            assert PROVIDER_KEY not in json.dumps(record)
            assert servers[agent].calls >= 2, agent
            assert all(PROVIDER_KEY in json.dumps(s.headers) for s in servers[agent].seen), agent
            # Every model call through the relay (Messages, Responses, Gemini) was priced.
            assert record["cost_usd"] is not None and record["cost_usd"] > 0, (agent, record)
            assert record["usage"]["unpriced_model_calls"] == 0, agent
            shapes[agent] = shape
    claude = shapes["claude-code"]
    for agent in ("codex", "gemini-cli"):
        assert shapes[agent]["kinds"] == claude["kinds"], agent
        assert shapes[agent]["meta_keys"] == claude["meta_keys"], agent
        assert shapes[agent]["artifacts"] == claude["artifacts"] == ["env.txt", "hello.txt"]


@pytest.mark.parametrize("agent", ["codex", "gemini-cli"])
def test_provider_error_fails_the_run_in_band(
    make_proxy: ProxyFactory,
    responses: tuple[ScriptedResponses, str],
    gemini: tuple[ScriptedGemini, str],
    agent: str,
) -> None:
    server = responses[0] if agent == "codex" else gemini[0]
    server.mode = "error"
    server.error_status = 500
    with make_proxy() as proxy:
        response = _run(proxy, agent)
        lines = [line for line in response.text.splitlines() if line.startswith("data:")]
        assert lines[-1] == "data: [DONE]"
        assert json.loads(lines[-2][5:])["error"]["type"] == "agent_error"
        record = trajectory(proxy, "acme", "agents", response.headers["x-jetty-trajectory-id"])
        assert record["status"] == "failed"
