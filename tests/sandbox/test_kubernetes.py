"""The Kubernetes backend against the API stand-in, with the real agents image.

The sandbox protocol as the run path uses it: launch, put_files, start, stdout lines, wait,
copy_out, close; a timeout that keeps the results; an image the node cannot pull; an agents
image without the agent's pinned version; recovery by labels; the opener's checks (its
settings, the cluster's answer, each permission it needs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import pytest
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.resources.core_v1 import Pod
from lightkube.resources.networking_v1 import NetworkPolicy
from starlette.applications import Starlette

from proxy.agents import get_adapter
from proxy.cli import main
from proxy.sandbox import open_backend
from proxy.sandbox.base import (
    LABEL_OWNER,
    LABEL_SERVER,
    AgentTools,
    EngineUnavailable,
    ImageNotFound,
    Orphans,
    SandboxError,
    SandboxRelay,
    SandboxSpec,
    SandboxStateError,
    SkipReason,
)
from proxy.sandbox.kube_exchange import SandboxExchange
from proxy.sandbox.kube_objects import Peer, PodSettings
from proxy.sandbox.kubernetes import KubernetesBackend, KubernetesSandbox, relay_peer
from proxy.settings import Settings
from tests.sandbox.conftest import TESTENV
from tests.support.kube.standin import KubeStandIn, standin_containers
from tests.support.live import serve_here

pytestmark = [pytest.mark.kube, pytest.mark.anyio]

CLAUDE = get_adapter("claude-code").binary.version


@pytest.fixture
async def relay_url(tmp_path: Path) -> AsyncIterator[tuple[SandboxExchange, str]]:
    """The exchange, served as the relay's network listener serves it."""
    exchange = SandboxExchange(tmp_path, poll_seconds=1)
    async with serve_here(Starlette(routes=exchange.routes())) as url:
        yield exchange, url


@pytest.fixture
async def backend(
    kube: KubeStandIn, agents_image: str, relay_url: tuple[SandboxExchange, str]
) -> AsyncIterator[KubernetesBackend]:
    exchange, _ = relay_url
    settings = PodSettings(
        namespace=kube.namespace,
        agents_image=agents_image,
        relay=Peer({"app.kubernetes.io/name": "jetty-proxy"}, 8081, "jetty-proxy"),
    )
    backend = KubernetesBackend.from_kubeconfig(kube.kubeconfig, settings, exchange)
    yield backend
    await backend.aclose()


@pytest.fixture
def spec(relay_url: tuple[SandboxExchange, str]) -> Any:
    _, url = relay_url

    def make(script: str, run_id: str = "0a1b2c3d", **changes: object) -> SandboxSpec:
        base = SandboxSpec(
            run_id=run_id,
            collection="acme",
            image=TESTENV,
            argv=["/bin/sh", "-c", script],
            env={"HOME": "/tmp/jetty-home"},
            user="1000:1000",
            labels={LABEL_OWNER: "owner1", LABEL_SERVER: "server1"},
            relay=SandboxRelay(token=f"jrt-token-{run_id}", url=url),
            timeout_seconds=60,
        )
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]

    return make


async def lines_of(sandbox: KubernetesSandbox) -> list[str]:
    async with aclosing(sandbox.stdout_lines()) as lines:
        return [line async for line in lines]


async def test_a_sandbox_from_launch_to_close(
    backend: KubernetesBackend, kube: KubeStandIn, docker_host: str, tmp_path: Path, spec: Any
) -> None:
    script = (
        "cat /app/assets/in.txt; cat /app/trajectory.json; echo; id -u; "
        "/opt/jetty/agents/claude-code/node_modules/@anthropic-ai/claude-code-linux-x64/claude"
        " --version; echo result > /app/results/r.txt; ln -s /etc/passwd /app/results/link; "
        'echo saved > "$HOME/session"; echo oops >&2; exit 3'
    )
    agent = AgentTools("claude-code", CLAUDE, "/opt/jetty/agents/claude-code")
    sandbox = await backend.launch(spec(script, agent=agent))
    await sandbox.put_files("/app/assets", {"in.txt": b"input\n"})
    await sandbox.put_files("/", {"app/trajectory.json": b"{}"})
    with pytest.raises(SandboxError, match="only under"):
        await sandbox.put_files("/etc", {"x": b""})
    try:
        await sandbox.start()
        assert await lines_of(sandbox) == ["input", "{}", "1000", f"{CLAUDE} (Claude Code)"]
        status = await sandbox.wait(timeout=120)
        assert (status.exit_code, status.timed_out, status.oom_killed) == (3, False, False)
        assert "oops" in sandbox.stderr_tail()
        report = await sandbox.copy_out("/app/results", tmp_path / "results", 10**6, 100)
        assert [f.path for f in report.files] == ["r.txt"]
        assert (tmp_path / "results" / "r.txt").read_bytes() == b"result\n"
        assert [(s.path, s.reason) for s in report.skipped] == [("link", SkipReason.SYMLINK)]
        home = await sandbox.copy_out("/tmp/jetty-home", tmp_path / "home", 10**6, 100)
        assert [f.path for f in home.files] == ["session"]
        with pytest.raises(SandboxStateError):
            await sandbox.copy_out("/etc", tmp_path / "etc", 10**6, 100)
        with pytest.raises(SandboxStateError):
            await sandbox.rerun(["true"], {})
    finally:
        await sandbox.close()
        await sandbox.close()  # idempotent
    async with AsyncClient(KubeConfig.from_file(kube.kubeconfig)) as client:
        with pytest.raises(ApiError):
            await client.get(NetworkPolicy, sandbox.name)
        with anyio.fail_after(60):  # the Pod terminates (its grace period), then goes
            while names := {p.metadata.name async for p in client.list(Pod) if p.metadata}:
                assert names == {sandbox.name}
                await anyio.sleep(0.1)
    assert standin_containers(docker_host, kube.instance) == []


async def test_the_pod_carries_the_run_token_and_the_deadline(
    backend: KubernetesBackend, kube: KubeStandIn, spec: Any
) -> None:
    sandbox = await backend.launch(spec("true", timeout_seconds=42.5))
    try:
        await sandbox.start()
        async with AsyncClient(KubeConfig.from_file(kube.kubeconfig)) as client:
            pod = (await client.get(Pod, sandbox.name)).to_dict()
        assert pod["spec"]["activeDeadlineSeconds"] == 43 + 300
        env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
        assert env["JETTY_RUN_TOKEN"] == "jrt-token-0a1b2c3d"
        await lines_of(sandbox)
        assert (await sandbox.wait(timeout=60)).exit_code == 0
    finally:
        await sandbox.close()


async def test_a_timeout_stops_the_agent_and_keeps_its_results(
    backend: KubernetesBackend, tmp_path: Path, spec: Any
) -> None:
    sandbox = await backend.launch(
        spec("echo partial > /app/results/p.txt; echo started; sleep 600")
    )
    try:
        await sandbox.start()
        async with aclosing(sandbox.stdout_lines()) as lines:
            async for line in lines:
                if line == "started":
                    break
        status = await sandbox.wait(timeout=0.5)
        assert status.timed_out and status.exit_code == 137
        report = await sandbox.copy_out("/app/results", tmp_path / "out", 10**6, 100)
        assert [f.path for f in report.files] == ["p.txt"]
    finally:
        await sandbox.close()


async def test_an_image_the_node_cannot_pull_fails_at_once(
    backend: KubernetesBackend, spec: Any, tmp_path: Path
) -> None:
    sandbox = await backend.launch(spec("true", image="registry.invalid/acme/missing:v1"))
    try:
        await sandbox.start()
        with pytest.raises(ImageNotFound, match="ErrImagePull") as missing:
            await lines_of(sandbox)
        assert missing.value.image == "registry.invalid/acme/missing:v1"
        # Stopped before its agent ran: nothing to wait for.
        await sandbox.kill()
        with anyio.fail_after(10):
            report = await sandbox.copy_out("/app/results", tmp_path / "none", 10**6, 100)
        assert report.files == []
    finally:
        await sandbox.close()


async def test_an_agents_image_without_the_pinned_version_says_so(
    backend: KubernetesBackend, spec: Any
) -> None:
    agent = AgentTools("claude-code", "0.0.1", "/opt/jetty/agents/claude-code")
    sandbox = await backend.launch(spec("true", agent=agent))
    try:
        await sandbox.start()
        assert await lines_of(sandbox) == []
        with pytest.raises(SandboxError, match=r"no claude-code 0\.0\.1") as failed:
            await sandbox.wait(timeout=60)
        assert "jetty-tools step exited with code 1" in str(failed.value)
    finally:
        await sandbox.close()


async def test_what_a_pod_cannot_take_is_refused_before_it_exists(
    backend: KubernetesBackend, spec: Any
) -> None:
    from proxy.sandbox.base import Mount

    with pytest.raises(SandboxError, match="host paths"):
        await backend.launch(spec("true", mounts=[Mount("/etc", "/mnt")]))
    with pytest.raises(SandboxError, match="over the network"):
        await backend.launch(spec("true", relay=SandboxRelay(token="t", socket=Path("/s"))))


async def test_recovery_removes_the_pods_of_dead_servers(
    backend: KubernetesBackend, kube: KubeStandIn, spec: Any
) -> None:
    alive = await backend.launch(spec("sleep 600", run_id="aaaa0001"))
    dead = await backend.launch(
        spec("sleep 600", run_id="bbbb0002", labels={LABEL_OWNER: "owner1", LABEL_SERVER: "gone"})
    )
    other = await backend.launch(
        spec("sleep 600", run_id="cccc0003", labels={LABEL_OWNER: "owner2", LABEL_SERVER: "x"})
    )
    try:
        for sandbox in (alive, dead, other):
            await sandbox.start()
        orphans = Orphans(owner="owner1", live_servers={"server1"})
        assert await backend.remove_orphans(orphans) == ["bbbb0002"]
        assert await backend.remove_orphans(orphans) == []  # terminating: not counted twice
        async with AsyncClient(KubeConfig.from_file(kube.kubeconfig)) as client:
            policies = {p.metadata.name async for p in client.list(NetworkPolicy) if p.metadata}
            assert policies == {alive.name, other.name}
            with anyio.fail_after(60):
                while True:
                    names = {p.metadata.name async for p in client.list(Pod) if p.metadata}
                    if dead.name not in names:
                        break
                    await anyio.sleep(0.1)
        assert names == {alive.name, other.name}
    finally:
        for sandbox in (alive, dead, other):
            await sandbox.close()


def settings_for(kube: KubeStandIn, tmp_path: Path, **changes: Any) -> Settings:
    fields: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "backend": "kubernetes",
        "kubeconfig": kube.kubeconfig,
        "kube_namespace": kube.namespace,
        "relay_url": "http://127.0.0.1:8081",
        "relay_port": 8081,
        **changes,
    }
    return Settings(**fields)


async def test_the_backend_is_chosen_by_the_setting(kube: KubeStandIn, tmp_path: Path) -> None:
    backend = await open_backend(settings_for(kube, tmp_path), owner="owner1")
    try:
        assert isinstance(backend, KubernetesBackend)
        assert backend.capabilities.runs_images and backend.capabilities.inline_files
        assert not backend.capabilities.reruns and not backend.capabilities.mounts_host
        assert not backend.capabilities.builds_images
        assert await backend.ping()
        assert [route.path for route in backend.sandbox_routes()] == [  # type: ignore[attr-defined]
            "/jetty/sandbox/v1/inputs",
            "/jetty/sandbox/v1/stop",
            "/jetty/sandbox/v1/outputs",
        ]
    finally:
        await backend.aclose()


async def test_the_opener_names_each_missing_permission(kube: KubeStandIn, tmp_path: Path) -> None:
    kube.access.denied.update({("get", "pods/log"), ("create", "networkpolicies")})
    with pytest.raises(EngineUnavailable) as refused:
        await open_backend(settings_for(kube, tmp_path))
    message = str(refused.value)
    assert "may not get pods/log, create networkpolicies in namespace 'jetty-sandboxes'" in message


async def test_the_opener_says_what_is_missing_or_unreachable(
    kube: KubeStandIn, tmp_path: Path
) -> None:
    with pytest.raises(SandboxError, match="needs relay_url"):
        await open_backend(settings_for(kube, tmp_path, relay_port=None))
    with pytest.raises(EngineUnavailable, match="no Kubernetes configuration"):
        await open_backend(settings_for(kube, tmp_path, kubeconfig=tmp_path / "missing"))
    unreachable = tmp_path / "unreachable"
    unreachable.write_text(kube.kubeconfig.read_text().replace(kube.url, "http://127.0.0.1:9"))
    with pytest.raises(EngineUnavailable, match="cannot be reached"):
        await open_backend(settings_for(kube, tmp_path, kubeconfig=unreachable))


def test_the_relay_as_a_network_policy_sees_it() -> None:
    service = relay_peer("http://jetty-proxy-relay.jetty-proxy.svc:8081", 8081)
    assert (service.labels, service.namespace, service.port) == (
        {"app.kubernetes.io/name": "jetty-proxy"},
        "jetty-proxy",
        8081,
    )
    assert relay_peer("http://relay.proxies:80", 9000).namespace == "proxies"
    outside = relay_peer("http://10.1.2.3:18081", 8081)
    assert (outside.cidr, outside.port) == ("10.1.2.3/32", 18081)
    assert relay_peer("http://[fd00::1]:8081", 8081).cidr == "fd00::1/128"
    with pytest.raises(SandboxError, match="neither a Service"):
        relay_peer("http://proxy.example.com:8081", 8081)


def test_serve_names_the_missing_permissions_and_does_not_start(
    kube: KubeStandIn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kube.access.denied.update({("watch", "pods"), ("delete", "networkpolicies")})
    settings = settings_for(kube, tmp_path)
    for name in ("backend", "kubeconfig", "kube_namespace", "relay_url", "relay_port"):
        monkeypatch.setenv(f"JETTY_PROXY_{name.upper()}", str(getattr(settings, name)))
    assert main(["serve", "--data-dir", str(tmp_path / "data"), "--port", "9"]) == 2
    error = capsys.readouterr().err
    assert "the sandbox backend cannot be used" in error
    assert "may not watch pods, delete networkpolicies in namespace 'jetty-sandboxes'" in error
