"""A runbook request becomes a real Claude Code run in a real container, streamed back.

Real parts: the Docker engine, the offline Debian test image, the pinned Claude Code CLI from
the agent cache, the proxy's relay on a unix socket mounted into the container, a scripted
Anthropic server speaking the Messages SSE protocol, and the `openai` client.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from typing import Any

import anyio
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from proxy.agents.install import AgentCache, AgentInstallError, AgentStatus
from proxy.agents.layout import InstalledAgent
from tests.e2e.conftest import PROVIDER_KEY, TEST_IMAGE, ProxyFactory, trajectory
from tests.support.openapi import validate_sse_chunks
from tests.support.scripted_anthropic import ScriptedAnthropic

pytestmark = [pytest.mark.docker, pytest.mark.agents]

RUNBOOK = """---
version: 1
agent: claude-code
---
# Copy the sample

Read the first {{sample_size}} rows of /app/assets/dataset.csv and write a summary into
{{results_dir}}.
"""
COMMAND = (
    "mkdir -p /app/results && echo 'hello from the agent' > /app/results/hello.txt"
    " && head -n 2 /app/assets/dataset.csv > /app/results/sample.csv"
    " && env > /app/results/env.txt"
    " && ln -s /etc/passwd /app/results/escape"
)
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": RUNBOOK},
    {"role": "user", "content": "Execute the runbook."},
]


def _upload(proxy: str) -> str:
    response = httpx.post(
        f"{proxy}/api/v1/sandbox/upload",
        data={"collection": "acme", "path": "uploads/dataset.csv"},
        files={"file": ("dataset.csv", b"a,b\n1,2\n3,4\n", "text/csv")},
    )
    assert response.status_code == 201, response.text
    path: str = response.json()["storage_path"]
    return path


def _jetty(storage_path: str, **extra: Any) -> dict[str, Any]:
    return {
        "runbook": True,
        "collection": "acme",
        "task": "analysis",
        "agent": "claude-code",
        "image": TEST_IMAGE,
        "file_paths": [storage_path],
        "template_variables": {"sample_size": "10"},
        "timeout_sec": 120,
        **extra,
    }


def streamed_run(proxy: str, jetty: dict[str, Any]) -> tuple[str, list[ChatCompletionChunk]]:
    """A streamed run through the `openai` client: its id and every chunk, usage included."""
    client = openai.OpenAI(base_url=proxy + "/v1", api_key="local", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="claude-sonnet-4-6",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"jetty": jetty},
    )
    return raw.headers["x-jetty-trajectory-id"], list(raw.parse())


def _content(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def _reasoning(chunks: list[ChatCompletionChunk]) -> str:
    parts = []
    for chunk in chunks:
        if chunk.choices:
            extra = chunk.choices[0].delta.model_extra or {}
            parts.append(str(extra.get("reasoning_content") or ""))
    return "".join(parts)


def test_streamed_run_keeps_artifacts_and_never_sees_the_provider_key(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str]
) -> None:
    scripted, _ = anthropic
    scripted.command = COMMAND
    with make_proxy() as proxy:
        run_id, chunks = streamed_run(proxy, _jetty(_upload(proxy)))

        # The stream: role first, the agent's text as content, tool activity as reasoning.
        assert chunks[0].choices[0].delta.role == "assistant"
        assert (chunks[0].model_extra or {})["jetty"]["trajectory_id"] == run_id
        content = _content(chunks)
        assert "Done: wrote hello.txt" in content
        assert "hello.txt" in content.split("Result files", 1)[1]
        reasoning = _reasoning(chunks)
        assert "Bash" in reasoning
        assert TEST_IMAGE in reasoning
        assert all(not c.choices or c.choices[0].delta.tool_calls is None for c in chunks)
        final = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
        assert final.choices[0].finish_reason == "stop"
        meta = (final.model_extra or {})["jetty"]
        assert meta["status"] == "completed"
        paths = {a["path"]: a for a in meta["artifacts"]}
        assert set(paths) == {"hello.txt", "sample.csv", "env.txt"}  # the symlink is skipped
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.prompt_tokens > 0

        # Artifacts download byte-identical; the input file reached /app/assets.
        # Signed links (they open without a key): {proxy}/s/{expires}.{mac}/api/v1/….
        assert re.match(
            rf"{re.escape(proxy)}/s/[0-9]+\.[\w-]+/api/v1/trajectory/acme/analysis/",
            str(paths["hello.txt"]["url"]),
        )
        hello = httpx.get(paths["hello.txt"]["url"])
        assert hello.content == b"hello from the agent\n"
        sample = httpx.get(paths["sample.csv"]["url"])
        assert sample.content == b"a,b\n1,2\n"

        # No provider key inside the sandbox: the agent only ever held a run token.
        env = httpx.get(paths["env.txt"]["url"]).text
        assert PROVIDER_KEY not in env
        assert "ANTHROPIC_API_KEY=jrt-" in env
        # The relay swapped the token for the key; the model server never saw a token.
        assert scripted.calls == 2
        assert all(s.headers.get("x-api-key") == PROVIDER_KEY for s in scripted.seen)

        record = trajectory(proxy, "acme", "analysis", run_id)
        assert record["status"] == "completed"
        assert PROVIDER_KEY not in json.dumps(record)
        events = httpx.get(
            f"{proxy}/api/v1/trajectory/acme/analysis/{run_id}/events", timeout=10
        ).text
        assert PROVIDER_KEY not in events
        assert "model_call" in events


def test_non_streaming_run_is_one_completion(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str]
) -> None:
    with make_proxy() as proxy:
        storage_path = _upload(proxy)
        client = openai.OpenAI(base_url=proxy + "/v1", api_key="local", max_retries=0)
        completion = client.chat.completions.create(
            model="claude-sonnet-4-6",
            messages=MESSAGES,
            extra_body={"jetty": _jetty(storage_path)},
        )
        content = completion.choices[0].message.content or ""
        assert "Done: wrote hello.txt" in content
        meta = (completion.model_extra or {})["jetty"]
        assert [a["path"] for a in meta["artifacts"]] == ["hello.txt"]


def test_agent_api_error_fails_the_run_in_band(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str]
) -> None:
    scripted, _ = anthropic
    scripted.mode = "error"
    scripted.error_status = 401
    with make_proxy() as proxy:
        storage_path = _upload(proxy)
        response = httpx.post(
            proxy + "/v1/chat/completions",
            json={
                "model": "claude-sonnet-4-6",
                "messages": MESSAGES,
                "stream": True,
                "jetty": _jetty(storage_path),
            },
            timeout=120,
        )
        assert response.status_code == 200
        lines = [line for line in response.text.splitlines() if line.startswith("data:")]
        assert lines[-1] == "data: [DONE]"
        error = json.loads(lines[-2][5:])
        assert error["error"]["type"] == "agent_error"
        assert '"finish_reason":"stop"' not in response.text
        validate_sse_chunks(response.text)
        run_id = response.headers["x-jetty-trajectory-id"]
        record = trajectory(proxy, "acme", "analysis", run_id)
        assert record["status"] == "failed"
        assert record["error"]


def test_bad_runbook_requests_start_nothing(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str]
) -> None:
    with make_proxy() as proxy:
        filled = {"runbook": True, "template_variables": {"sample_size": "3"}}
        cases: list[tuple[dict[str, Any], int, str]] = [
            ({**filled, "image": "Not A Ref"}, 400, "jetty.image"),
            ({**filled, "snapshot": "nope"}, 400, "jetty.snapshot"),
            ({**filled, "bogus": 1}, 400, "jetty.bogus"),
            ({**filled, "file_paths": ["default/nope.csv"]}, 404, "jetty.file_paths[0]"),
            ({"runbook": True}, 400, "jetty.template_variables"),
            ({**filled, "collection": "../etc"}, 400, "jetty.collection"),
            ({**filled, "timeout_sec": 0}, 400, "jetty.timeout_sec"),
        ]
        for block, status, param in cases:
            response = httpx.post(
                proxy + "/v1/chat/completions",
                json={"model": "claude-sonnet-4-6", "messages": MESSAGES, "jetty": block},
            )
            assert response.status_code == status, (block, response.text)
            assert response.json()["error"]["param"] == param, block
    assert anthropic[0].calls == 0


def test_artifacts_written_before_a_failure_are_kept(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str]
) -> None:
    scripted, _ = anthropic
    scripted.fail_after = 1  # the tool call runs, then the model fails
    with make_proxy() as proxy:
        storage_path = _upload(proxy)
        response = httpx.post(
            proxy + "/v1/chat/completions",
            json={
                "model": "claude-sonnet-4-6",
                "messages": MESSAGES,
                "stream": True,
                "jetty": _jetty(storage_path),
            },
            timeout=120,
        )
        lines = [line for line in response.text.splitlines() if line.startswith("data:")]
        assert json.loads(lines[-2][5:])["error"]["type"] == "agent_error"
        record = trajectory(proxy, "acme", "analysis", response.headers["x-jetty-trajectory-id"])
        assert record["status"] == "failed"
        kept = {a["path"]: a["url"] for a in record["artifacts"]}
        assert httpx.get(kept["hello.txt"]).content == b"hello from the agent\n"


@pytest.mark.parametrize("fails", [False, True], ids=["installs", "install-fails"])
def test_an_agent_installed_by_its_first_run_is_installed_inside_the_stream(
    make_proxy: ProxyFactory,
    anthropic: tuple[ScriptedAnthropic, str],
    monkeypatch: pytest.MonkeyPatch,
    fails: bool,
) -> None:
    # The cache reports the CLI missing, and installing it takes a while (npm's download,
    # stood in for by a delay in front of the real cache): the response must not wait for it.
    installed_at: list[float] = []
    real_ensure, real_status = AgentCache.ensure, AgentCache.status

    def missing(self: AgentCache, adapter: Any) -> AgentStatus:
        return dataclasses.replace(real_status(self, adapter), installed=False)

    async def slow_ensure(self: AgentCache, adapter: Any) -> InstalledAgent:
        await anyio.sleep(2)
        installed_at.append(time.monotonic())
        if fails:
            raise AgentInstallError(adapter.binary.npm_package, "1", "npm failed", "E404")
        return await real_ensure(self, adapter)

    monkeypatch.setattr(AgentCache, "status", missing)
    monkeypatch.setattr(AgentCache, "ensure", slow_ensure)
    with make_proxy() as proxy:
        storage_path = _upload(proxy)
        body = {
            "model": "claude-sonnet-4-6",
            "messages": MESSAGES,
            "stream": True,
            "jetty": _jetty(storage_path),
        }
        with httpx.stream("POST", proxy + "/v1/chat/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            first_chunk_at = None
            text = ""
            for line in r.iter_lines():
                if line.startswith("data:") and first_chunk_at is None:
                    first_chunk_at = time.monotonic()
                text += line + "\n"
        record = trajectory(proxy, "acme", "analysis", r.headers["x-jetty-trajectory-id"])
    assert first_chunk_at is not None and installed_at and first_chunk_at < installed_at[0]
    chunks = validate_sse_chunks(text)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    assert "Installing claude-code 2.1.328" in reasoning
    lines = [line for line in text.splitlines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    if fails:
        error = json.loads(lines[-2][5:])["error"]
        assert error["code"] == "agent_unavailable"
        assert "could not be installed" in error["message"]
        assert anthropic[0].calls == 0
        assert record["status"] == "failed"
    else:
        assert "Done: wrote hello.txt" in "".join(d.get("content") or "" for d in deltas)
        assert record["status"] == "completed"


def test_a_long_silent_tool_step_shows_movement_in_the_stream(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str]
) -> None:
    scripted, _ = anthropic
    scripted.command = "sleep 3 && echo slept"
    with make_proxy(still_running_seconds=0.5) as proxy:
        client = openai.OpenAI(base_url=proxy + "/v1", api_key="local", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="claude-sonnet-4-6",
            messages=[{"role": "system", "content": "# Wait"}, MESSAGES[1]],
            stream=True,
            extra_body={"jetty": {"runbook": True, "collection": "acme", "task": "wait"}},
        )
        run_id = raw.headers["x-jetty-trajectory-id"]
        reasoning = _reasoning(list(raw.parse()))
        # Lines while the tool ran (between its call and its result), none after.
        during = reasoning.split("→ Bash", 1)[1].split("← Bash", 1)[0]
        assert re.search(r"^still running: Bash, \d+ s$", during, re.MULTILINE), reasoning
        assert "still running" not in reasoning.split("← Bash", 1)[1]
        # They were the stream's own: the run's recorded events have none.
        events = httpx.get(f"{proxy}/api/v1/trajectory/acme/wait/{run_id}/events").text
        assert "still running" not in events
