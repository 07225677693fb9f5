"""Runbook runs on the Kubernetes backend, end to end, through the Kubernetes API stand-in.

Real parts: a proxy configured with ``backend = "kubernetes"`` (in-process, and a real
``jetty-proxy serve`` for the killed-proxy case) pointing at the stand-in, whose Pods run as
containers on the test Docker engine; the agents image with the pinned Claude Code CLI (the
proxy itself has no agent installed); the model relay on its TCP port, where the Pods reach it
and move their files; a scripted Anthropic server; the `openai` client.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.app import create_app
from proxy.sandbox.base import LABEL_RUN_ID
from proxy.settings import Settings
from tests.e2e.conftest import PROVIDER_KEY, TEST_IMAGE, trajectory
from tests.e2e.test_claude_run import (
    COMMAND,
    MESSAGES,
    _content,
    _jetty,
    _reasoning,
    _upload,
    streamed_run,
)
from tests.support.kube.standin import KubeStandIn, kube_standin
from tests.support.live import free_port, serve, serve_process
from tests.support.scripted_anthropic import ScriptedAnthropic

pytestmark = [pytest.mark.docker, pytest.mark.agents, pytest.mark.kube]

UNPULLABLE = "registry.invalid/acme/missing:v1"
ProxyFactory = Callable[..., AbstractContextManager[str]]


@pytest.fixture
def kube(docker_host: str, tmp_path: Path) -> Iterator[KubeStandIn]:
    with kube_standin(docker_host, tmp_path) as standin:
        yield standin


@pytest.fixture
def proxy_settings(
    tmp_path: Path, kube: KubeStandIn, agents_image: str, anthropic: tuple[ScriptedAnthropic, str]
) -> dict[str, Any]:
    """A Kubernetes proxy's settings: the stand-in, the relay on a loopback port (the
    stand-in's Pods share the host's network), no agent installed on this machine."""
    port = free_port()
    return {
        "data_dir": tmp_path / "data",
        "upstream_url": "http://127.0.0.1:9/v1",
        "backend": "kubernetes",
        "kubeconfig": kube.kubeconfig,
        "kube_namespace": kube.namespace,
        "relay_url": f"http://127.0.0.1:{port}",
        "relay_port": port,
        "agents_image": agents_image,
        "agent_cache_dir": tmp_path / "no-agents-here",
        "default_image": TEST_IMAGE,
        "anthropic_base_url": anthropic[1],
        "anthropic_api_key": PROVIDER_KEY,
    }


@pytest.fixture
def make_proxy(proxy_settings: dict[str, Any]) -> ProxyFactory:
    @contextmanager
    def start(**overrides: Any) -> Iterator[str]:
        with serve(create_app(Settings(**{**proxy_settings, **overrides}))) as url:
            yield url

    return start


def pods_of(kube: KubeStandIn, run_id: str) -> list[dict[str, Any]]:
    """The run's Pods that the stand-in still has and that are not being deleted."""
    response = httpx.get(
        f"{kube.url}/api/v1/namespaces/{kube.namespace}/pods",
        params={"labelSelector": f"{LABEL_RUN_ID}={run_id}"},
        headers={"Authorization": f"Bearer {kube.token}"},
    )
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return [pod for pod in items if "deletionTimestamp" not in pod["metadata"]]


def wait_for(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _data(stream: str) -> list[str]:
    return [line[5:].strip() for line in stream.splitlines() if line.startswith("data:")]


def test_a_streamed_run_in_a_pod(
    make_proxy: ProxyFactory,
    anthropic: tuple[ScriptedAnthropic, str],
    kube: KubeStandIn,
    tmp_path: Path,
) -> None:
    scripted, _ = anthropic
    scripted.command = COMMAND
    with make_proxy() as proxy:
        run_id, chunks = streamed_run(proxy, _jetty(_upload(proxy)))
        content = _content(chunks)
        assert "Done: wrote hello.txt" in content
        reasoning = _reasoning(chunks)
        assert "Bash" in reasoning  # the agent's tool activity, from the Pod's log
        assert "kubernetes sandbox" in reasoning
        final = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
        meta = (final.model_extra or {})["jetty"]
        assert meta["status"] == "completed"
        paths = {a["path"]: a["url"] for a in meta["artifacts"]}
        assert set(paths) == {"hello.txt", "sample.csv", "env.txt"}  # the symlink is skipped
        assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0

        # Byte-identical through the Pod's outputs: what the agent wrote, and the input file
        # that reached /app/assets through its inputs.
        assert httpx.get(paths["hello.txt"]).content == b"hello from the agent\n"
        assert httpx.get(paths["sample.csv"]).content == b"a,b\n1,2\n"

        # No provider key in the Pod's environment, nor in anything the cluster was sent.
        env = httpx.get(paths["env.txt"]).text
        assert PROVIDER_KEY not in env
        assert "ANTHROPIC_API_KEY=jrt-" in env
        assert "ANTHROPIC_UNIX_SOCKET" not in env  # the relay is reached over the network
        [pod] = [o for o in kube.received if o["kind"] == "Pod"]
        assert PROVIDER_KEY not in json.dumps(kube.received)
        agent_env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
        assert agent_env["ANTHROPIC_BASE_URL"].startswith("http://127.0.0.1:")
        assert {o["kind"] for o in kube.received} == {"Pod", "NetworkPolicy"}
        assert all(s.headers.get("x-api-key") == PROVIDER_KEY for s in scripted.seen)

        record = trajectory(proxy, "acme", "analysis", run_id)
        assert record["status"] == "completed"
        assert record["environment"]["backend"] == "kubernetes"
        wait_for(lambda: pods_of(kube, run_id) == [], 10, "the Pod to be deleted")
    # The proxy installed nothing: the agent came from the agents image.
    assert not (tmp_path / "no-agents-here").exists() or not any(
        (tmp_path / "no-agents-here").iterdir()
    )


def test_a_client_that_goes_away_has_its_pod_deleted(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str], kube: KubeStandIn
) -> None:
    scripted, _ = anthropic
    scripted.gate = threading.Event()  # the run stays live after its first tool
    with make_proxy() as proxy:
        request = {
            "model": "claude-sonnet-4-6",
            "messages": MESSAGES,
            "stream": True,
            "jetty": {**_jetty(_upload(proxy)), "task": "life"},
        }
        with httpx.stream("POST", proxy + "/v1/chat/completions", json=request, timeout=60) as r:
            run_id = r.headers["x-jetty-trajectory-id"]
            lines = r.iter_lines()  # kept: an iterator dropped would close the stream
            assert next(lines).startswith("data:")
            wait_for(lambda: scripted.calls >= 2, 60, "the agent's second model call")
            assert len(pods_of(kube, run_id)) == 1
        # The client is gone: the Pod must be deleted within 2 s.
        wait_for(lambda: pods_of(kube, run_id) == [], 2.0, "the Pod to be deleted")
        wait_for(
            lambda: trajectory(proxy, "acme", "life", run_id)["status"] == "cancelled",
            10,
            "the run to be cancelled",
        )
        record = trajectory(proxy, "acme", "life", run_id)
        # What the agent wrote before it was stopped is kept.
        assert [a["path"] for a in record["artifacts"]] == ["hello.txt"]
        scripted.gate.set()


def test_a_run_past_its_time_is_stopped_and_keeps_its_results(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str], kube: KubeStandIn
) -> None:
    scripted, _ = anthropic
    scripted.gate = threading.Event()
    with make_proxy() as proxy:
        jetty = {**_jetty(_upload(proxy)), "task": "life", "timeout_sec": 8}
        response = httpx.post(
            proxy + "/v1/chat/completions",
            json={"model": "claude-sonnet-4-6", "messages": MESSAGES, "jetty": jetty},
            timeout=120,
        )
        scripted.gate.set()
        assert response.status_code == 502
        error = response.json()["error"]
        assert error["code"] == "timeout" and "timed out after 8 s" in error["message"]
        run_id = response.headers["x-jetty-trajectory-id"]
        record = trajectory(proxy, "acme", "life", run_id)
        assert record["status"] == "failed"
        assert [a["path"] for a in record["artifacts"]] == ["hello.txt"]
        wait_for(lambda: pods_of(kube, run_id) == [], 10, "the Pod to be deleted")
        [pod] = [o for o in kube.received if o["kind"] == "Pod"]
        assert pod["spec"]["activeDeadlineSeconds"] == 8 + 300  # the cluster's own backstop


def test_an_image_the_cluster_cannot_pull_fails_the_run_at_once(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str], kube: KubeStandIn
) -> None:
    with make_proxy() as proxy:
        jetty = {**_jetty(_upload(proxy)), "image": UNPULLABLE, "timeout_sec": 1800}
        response = httpx.post(
            proxy + "/v1/chat/completions",
            json={
                "model": "claude-sonnet-4-6",
                "messages": MESSAGES,
                "stream": True,
                "jetty": jetty,
            },
            timeout=60,  # far less than the run's own timeout
        )
        data = _data(response.text)
        assert data[-1] == "[DONE]"
        error = json.loads(data[-2])["error"]
        assert error["code"] == "image_not_found"
        assert UNPULLABLE in error["message"] and "ErrImagePull" in error["message"]
        run_id = response.headers["x-jetty-trajectory-id"]
        assert trajectory(proxy, "acme", "analysis", run_id)["status"] == "failed"
        wait_for(lambda: pods_of(kube, run_id) == [], 10, "the Pod to be deleted")
    assert anthropic[0].calls == 0


def test_a_killed_proxys_run_is_failed_and_its_pod_removed_by_the_next(
    proxy_settings: dict[str, Any],
    make_proxy: ProxyFactory,
    anthropic: tuple[ScriptedAnthropic, str],
    kube: KubeStandIn,
) -> None:
    scripted, _ = anthropic
    scripted.gate = threading.Event()
    env = {f"JETTY_PROXY_{name.upper()}": str(value) for name, value in proxy_settings.items()}
    with serve_process(env=env) as first:
        request = {
            "model": "claude-sonnet-4-6",
            "messages": MESSAGES,
            "stream": True,
            "jetty": {**_jetty(_upload(first.url)), "task": "life"},
        }
        with httpx.stream("POST", first.url + "/v1/chat/completions", json=request) as r:
            run_id = r.headers["x-jetty-trajectory-id"]
            wait_for(lambda: scripted.calls >= 2, 60, "the agent's second model call")
            assert len(pods_of(kube, run_id)) == 1
            os.kill(first.process.pid, signal.SIGKILL)
            first.process.wait(timeout=30)
    assert len(pods_of(kube, run_id)) == 1  # nobody cleaned up after it
    scripted.gate.set()
    # The next proxy on the same database finds the first one gone (its lock is free).
    with make_proxy() as second:
        record = trajectory(second, "acme", "life", run_id)
        assert record["status"] == "failed"
        assert record["error"] == "interrupted: the proxy stopped while the run was live"
        wait_for(lambda: pods_of(kube, run_id) == [], 10, "the Pod to be removed")
