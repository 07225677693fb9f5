"""Real agent runs on the local sandbox backend (no Docker), with and without bubblewrap.

Real parts: the pinned Claude Code, Codex and Gemini CLIs from the agent cache, the loopback
forwarder Codex and Gemini CLI reach their model through, the proxy's relay on its unix
socket, scripted model servers speaking the real SSE protocols, and the `openai` client.
The agent's tool command writes through ``$JETTY_APP_DIR`` (the run's /app either way) and
leaves a background process behind, which must not outlive the run.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from proxy.app import create_app
from proxy.sandbox.local import LocalBackend
from proxy.sandbox.rundirs import MARK_ENV
from proxy.settings import Settings
from tests.e2e.conftest import PROVIDER_KEY, trajectory
from tests.support.ci import require_bwrap
from tests.support.live import serve
from tests.support.scripted_anthropic import ScriptedAnthropic
from tests.support.scripted_gemini import ScriptedGemini
from tests.support.scripted_responses import ScriptedResponses

pytestmark = pytest.mark.agents

MODELS = {"claude-code": "claude-sonnet-4-6", "codex": "gpt-5.5", "gemini-cli": "gemini-2.5-pro"}
RUNBOOK = "# Runbook\n\nWrite hello.txt into {{results_dir}}."


@pytest.fixture(params=[pytest.param(False, id="plain"), pytest.param(True, id="bwrap")])
def local_proxy(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    agent_cache: Path,
    anthropic: tuple[ScriptedAnthropic, str],
    responses: tuple[ScriptedResponses, str],
    gemini: tuple[ScriptedGemini, str],
) -> Callable[[], AbstractContextManager[tuple[str, Path, bool]]]:
    """Starts a live proxy on a local backend: its URL, where runs go, whether bwrap is used."""
    if request.param:
        require_bwrap()
    runs = tmp_path / "runs"
    settings = Settings(
        data_dir=tmp_path / "data",
        upstream_url="http://127.0.0.1:9/v1",
        backend="local",
        agent_cache_dir=agent_cache,
        default_image="local",
        anthropic_base_url=anthropic[1],
        anthropic_api_key=PROVIDER_KEY,
        openai_base_url=responses[1] + "/v1",
        openai_api_key=PROVIDER_KEY,
        google_base_url=gemini[1],
        google_api_key=PROVIDER_KEY,
        keepalive_seconds=15.0,
    )

    @contextmanager
    def start() -> Iterator[tuple[str, Path, bool]]:
        backend = LocalBackend(runs, use_bwrap=bool(request.param), kill_grace=1.0)
        with serve(create_app(settings, sandbox_backend=backend)) as url:
            yield url, runs, backend.isolated

    return start


@pytest.mark.parametrize("agent", list(MODELS))
def test_a_streamed_run_on_the_local_backend(
    local_proxy: Callable[[], AbstractContextManager[tuple[str, Path, bool]]],
    anthropic: tuple[ScriptedAnthropic, str],
    responses: tuple[ScriptedResponses, str],
    gemini: tuple[ScriptedGemini, str],
    agent: str,
) -> None:
    payload = f"hello from {agent} {secrets.token_hex(8)}\n"
    # A sleep no other process on this machine runs: it must die with the run.
    marker = f"{secrets.randbelow(9000) + 1000}.{secrets.randbelow(10**6):06d}"
    servers: dict[str, ScriptedAnthropic | ScriptedResponses | ScriptedGemini] = {
        "claude-code": anthropic[0],
        "codex": responses[0],
        "gemini-cli": gemini[0],
    }
    server = servers[agent]
    server.command = (
        f"printf '%s\\n' '{payload.strip()}' > \"$JETTY_APP_DIR/results/hello.txt\""
        f' && env > "$JETTY_APP_DIR/results/env.txt"'
        f" && (nohup sleep {marker} >/dev/null 2>&1 &)"
    )
    with local_proxy() as (proxy, runs, isolated):
        client = openai.OpenAI(base_url=proxy + "/v1", api_key="local", max_retries=0, timeout=180)
        raw = client.chat.completions.with_raw_response.create(
            model=MODELS[agent],
            messages=[
                {"role": "system", "content": RUNBOOK},
                {"role": "user", "content": "Execute the runbook."},
            ],
            stream=True,
            extra_body={
                "jetty": {
                    "runbook": True,
                    "collection": "acme",
                    "task": "local",
                    "agent": agent,
                    "timeout_sec": 120,
                }
            },
        )
        run_id = raw.headers["x-jetty-trajectory-id"]
        chunks: list[ChatCompletionChunk] = list(raw.parse())

        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert "Done: wrote hello.txt" in content, content
        final = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
        assert final.choices[0].finish_reason == "stop"
        meta = (final.model_extra or {})["jetty"]
        assert meta["status"] == "completed", meta
        urls = {a["path"]: a["url"] for a in meta["artifacts"]}
        assert sorted(urls) == ["env.txt", "hello.txt"]
        assert httpx.get(urls["hello.txt"]).content == payload.encode()

        # The agent ran in the run's own home, never the host's shared /tmp, and never saw the key.
        env = dict(
            line.split("=", 1)
            for line in httpx.get(urls["env.txt"]).text.splitlines()
            if "=" in line
        )
        assert PROVIDER_KEY not in "\n".join(env.values())
        assert env["PWD"] == env["JETTY_APP_DIR"]  # the prelude's `cd /app` went there too
        if isolated:  # the sandbox paths, bound to the run's directories
            assert (env["JETTY_APP_DIR"], env["HOME"]) == ("/app", "/tmp/jetty-home")
        else:  # host paths, rewritten
            assert env["JETTY_APP_DIR"].startswith(str(runs))
            assert env["HOME"] == env["JETTY_APP_DIR"].removesuffix("/app") + "/home"
            assert "/opt/jetty/" not in env["PATH"]
        assert server.calls >= 2
        assert trajectory(proxy, "acme", "local", run_id)["status"] == "completed"

        # No process of the run is left (the background sleep included), even while its
        # sandbox may be kept for a follow-up turn.
        marks = [marker, str(runs), *(f"{MARK_ENV}={d.name}" for d in runs.iterdir())]
        deadline = time.monotonic() + 10
        while left := _processes_with(marks):
            assert time.monotonic() < deadline, left
            time.sleep(0.1)
    # Once the proxy stopped, no run directory either (nor their base, then empty).
    assert not runs.exists()


def _processes_with(marks: list[str]) -> list[str]:
    """Live processes whose argv, environment or working directory contains one of ``marks``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if any(mark in text for mark in marks for text in (cmdline, environ, cwd)):
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found
