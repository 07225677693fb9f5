"""What a real agent run's container gets by default, and what a request may change: no
capabilities, a read-only root file system, the server's memory and CPU limits."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import TEST_IMAGE, ProxyFactory, managed_containers, trajectory
from tests.sandbox.conftest import engine_client
from tests.support.scripted_anthropic import ScriptedAnthropic

pytestmark = [pytest.mark.docker, pytest.mark.agents]

PROBE = (
    "mkdir -p /app/results && cd /app/results"
    " && grep CapEff /proc/self/status > caps.txt"
    " && (touch /usr/probe 2>/dev/null && echo writable || echo read-only) > root.txt"
    " && id -u > uid.txt"
)


def _run(proxy: str, **jetty: Any) -> str:
    request = {
        "model": "claude-sonnet-4-6",
        "stream": True,
        "messages": [
            {"role": "system", "content": "# Runbook\n\nLook around."},
            {"role": "user", "content": "Go."},
        ],
        "jetty": {
            "runbook": True,
            "collection": "acme",
            "task": "box",
            "image": TEST_IMAGE,
            **jetty,
        },
    }
    response = httpx.post(proxy + "/v1/chat/completions", json=request, timeout=120)
    run_id = response.headers["x-jetty-trajectory-id"]
    record = trajectory(proxy, "acme", "box", run_id)
    assert record["status"] == "completed", record["error"]
    return run_id


def _host_config(docker_host: str, run_id: str) -> dict[str, Any]:
    """The HostConfig of the run's container, kept for the conversation's next turn."""
    ids = [
        c["Id"]
        for c in managed_containers(docker_host)
        if c["Labels"].get("jetty-proxy.run-id") == run_id
    ]
    assert len(ids) == 1, ids
    with engine_client(docker_host) as engine:
        config: dict[str, Any] = engine.get(f"/containers/{ids[0]}/json").json()["HostConfig"]
    return config


def _results(proxy: str, run_id: str) -> dict[str, str]:
    record = trajectory(proxy, "acme", "box", run_id)
    return {a["path"]: httpx.get(a["url"]).text.strip() for a in record["artifacts"]}


def test_a_run_has_no_capabilities_a_read_only_root_and_the_default_limits(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str], docker_host: str
) -> None:
    anthropic[0].command = PROBE
    with engine_client(docker_host) as engine:
        cpus = engine.get("/info").json()["NCPU"]
    with make_proxy() as proxy:
        default = _run(proxy)
        host = _host_config(docker_host, default)
        asked = _run(proxy, memory="1g", cpus=0.5)
        smaller = _host_config(docker_host, asked)
        results = _results(proxy, default)

    assert results["root.txt"] == "read-only"
    assert results["uid.txt"] == "0"
    assert int(results["caps.txt"].split()[1], 16) == 0  # root, and no capability at all
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["ReadonlyRootfs"] is True
    assert host["SecurityOpt"] == ["no-new-privileges"] and host["PidsLimit"] == 512
    assert host["Memory"] == host["MemorySwap"] == 4 * 1024**3
    assert host["NanoCpus"] == min(2, cpus) * 10**9
    assert (smaller["Memory"], smaller["NanoCpus"]) == (1024**3, 5 * 10**8)
    assert json.dumps(host).count('"Type": "volume"') == 2  # /app and /tmp
