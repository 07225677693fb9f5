"""A preset with ``warm = 1`` on the Docker engine: its run claims a started container, the
real Claude Code CLI does the work, and the pool starts another; nothing of a run is in a
waiting container, nor in the claimed one's configuration."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import httpx
import pytest

from proxy.presets import Preset
from proxy.sandbox import DockerBackend
from proxy.sandbox.base import LABEL_POOL, LABEL_RUN_ID
from tests.e2e.conftest import PROVIDER_KEY, TEST_IMAGE, ProxyFactory, trajectory
from tests.support.openapi import validate_sse_chunks
from tests.support.scripted_anthropic import ScriptedAnthropic
from tests.support.scripted_responses import ScriptedResponses

pytestmark = [pytest.mark.docker, pytest.mark.agents]

PRESET = Preset(
    model="claude-sonnet-4-6",
    runbook="# Helper\n\nWrite hello.txt into /app/results.",
    jetty={"collection": "acme", "task": "warm", "image": TEST_IMAGE, "timeout_sec": 120},
    warm=1,
)


def labelled(docker_host: str, label: str) -> list[dict[str, Any]]:
    """The full configuration of the containers carrying ``label``."""

    async def query() -> list[dict[str, Any]]:
        backend = DockerBackend.from_url(docker_host)
        try:
            listed = await backend._engine.request(
                "GET",
                "/containers/json",
                params={"all": "1", "filters": json.dumps({"label": [label]})},
            )
            return [
                (await backend._engine.request("GET", f"/containers/{c['Id']}/json")).json()
                for c in listed.json()
            ]
        finally:
            await backend.aclose()

    return anyio.run(query)


def ready(proxy: str) -> float:
    for line in httpx.get(proxy + "/metrics").text.splitlines():
        if line.startswith('jetty_proxy_warm_sandboxes_ready{pool="preset:helper"}'):
            return float(line.split()[-1])
    return 0.0


# A chat request for the preset "helper".
HELPER_REQUEST = {
    "model": "jetty/helper",
    "stream": True,
    "messages": [{"role": "user", "content": "Please write hello.txt"}],
}


def wait_ready(proxy: str, count: float) -> None:
    deadline = time.monotonic() + 120
    while ready(proxy) != count:
        assert time.monotonic() < deadline, "the pool did not fill"
        time.sleep(0.1)


def test_a_preset_run_claims_a_warm_container_and_the_pool_refills(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str], docker_host: str
) -> None:
    with make_proxy(presets={"helper": PRESET}) as proxy:
        wait_ready(proxy, 1)
        [waiting] = labelled(docker_host, f"{LABEL_POOL}=preset:helper")
        assert waiting["State"]["Running"]
        assert PROVIDER_KEY not in json.dumps(waiting)
        assert "jrt-" not in json.dumps(waiting["Config"])
        response = httpx.post(proxy + "/v1/chat/completions", json=HELPER_REQUEST, timeout=120)
        assert response.status_code == 200
        run_id = response.headers["x-jetty-trajectory-id"]
        chunks = validate_sse_chunks(response.text)
        text = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )
        # The progress line: the run took over the Claude Code started in the sandbox.
        assert "(warm docker sandbox, its agent started ahead" in response.text
        assert "Done: wrote hello.txt" in text
        record = trajectory(proxy, "acme", "warm", run_id)
        assert record["status"] == "completed"
        assert [a["path"] for a in record["artifacts"]] == ["hello.txt"]
        # The run's token went to the model relay, never into a container's configuration.
        assert anthropic[0].seen and anthropic[0].seen[0].headers["x-api-key"] == PROVIDER_KEY
        wait_ready(proxy, 1)
        pooled = labelled(docker_host, f"{LABEL_POOL}=preset:helper")
        # The claimed container (kept for a follow-up, or gone) held its run in no config.
        for container in pooled:
            assert PROVIDER_KEY not in json.dumps(container)
            assert "jrt-" not in json.dumps(container["Config"])
        [refilled] = [c for c in pooled if c["State"]["Running"]]
        assert refilled["Id"] != waiting["Id"]
        assert refilled["Config"]["Labels"][LABEL_RUN_ID] != run_id
        metrics = httpx.get(proxy + "/metrics").text
        assert 'jetty_proxy_warm_claims_total{pool="preset:helper"} 1.0' in metrics
        assert 'jetty_proxy_warm_takeovers_total{pool="preset:helper"} 1.0' in metrics


CODEX_PRESET = Preset(
    model="gpt-5.5",
    runbook="# Helper\n\nRUNBOOK-MARK: write hello.txt into /app/results.",
    jetty={
        "collection": "acme",
        "task": "warm-codex",
        "image": TEST_IMAGE,
        "agent": "codex",
        "timeout_sec": 120,
    },
    warm=1,
)


def test_a_codex_run_takes_over_the_codex_started_in_its_sandbox(
    make_proxy: ProxyFactory, responses: tuple[ScriptedResponses, str], docker_host: str
) -> None:
    """The real Codex CLI, started ahead in the warm container (reading its prompt from
    stdin), gets the run's instruction and, in AGENTS.md written at the claim, its runbook."""
    with make_proxy(presets={"helper": CODEX_PRESET}) as proxy:
        wait_ready(proxy, 1)
        [waiting] = labelled(docker_host, f"{LABEL_POOL}=preset:helper")
        assert "jrt-" not in json.dumps(waiting["Config"])
        assert "RUNBOOK-MARK" not in json.dumps(waiting)
        response = httpx.post(proxy + "/v1/chat/completions", json=HELPER_REQUEST, timeout=120)
        assert response.status_code == 200
        run_id = response.headers["x-jetty-trajectory-id"]
        assert "(warm docker sandbox, its agent started ahead" in response.text
        record = trajectory(proxy, "acme", "warm-codex", run_id)
        assert record["status"] == "completed", record.get("error")
        assert [a["path"] for a in record["artifacts"]] == ["hello.txt"]
        first = responses[0].seen[0].body.decode()
        assert "RUNBOOK-MARK" in first and "Please write hello.txt" in first
        assert 'jetty_proxy_warm_takeovers_total{pool="preset:helper"} 1.0' in (
            httpx.get(proxy + "/metrics").text
        )
