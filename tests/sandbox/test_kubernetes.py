"""The Kubernetes backend (draft) against the API stand-in, with the real agents image.

The sandbox protocol as the run path uses it: launch, put_files, start, stdout lines, wait,
copy_out, close; a timeout that keeps the results; an image the node cannot pull; recovery by
labels; the start-up permission check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import anyio
import pytest
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.resources.core_v1 import Pod
from lightkube.resources.networking_v1 import NetworkPolicy

from proxy.sandbox.base import (
    LABEL_OWNER,
    LABEL_SERVER,
    ImageNotFound,
    Orphans,
    SandboxSpec,
    SandboxStateError,
    SkipReason,
)
from proxy.sandbox.kube_exchange import SandboxExchange
from proxy.sandbox.kube_objects import Peer, PodSettings
from proxy.sandbox.kubernetes import KubernetesBackend, KubernetesSandbox
from tests.sandbox.conftest import TESTENV
from tests.support.kube.standin import KubeStandIn, standin_containers
from tests.support.live import serve_here

pytestmark = [pytest.mark.kube, pytest.mark.anyio]


@pytest.fixture
async def backend(
    kube: KubeStandIn, agents_image: str, tmp_path: Path
) -> AsyncIterator[KubernetesBackend]:
    exchange = SandboxExchange(tmp_path, poll_seconds=1)
    async with serve_here(exchange.app()) as url:
        settings = PodSettings(
            namespace=kube.namespace,
            agents_image=agents_image,
            sandbox_url=url,
            relay=Peer({"app.kubernetes.io/name": "jetty-proxy"}, 8081, "jetty-proxy"),
        )
        backend = KubernetesBackend.from_kubeconfig(
            kube.kubeconfig, settings, exchange, deadline_seconds=600
        )
        yield backend
        await backend.aclose()


def spec(script: str, run_id: str = "0a1b2c3d", **changes: object) -> SandboxSpec:
    base = SandboxSpec(
        run_id=run_id,
        collection="acme",
        image=TESTENV,
        argv=["/bin/sh", "-c", script],
        env={"HOME": "/tmp/jetty-home"},
        user="1000:1000",
        labels={LABEL_OWNER: "owner1", LABEL_SERVER: "server1"},
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


async def lines_of(sandbox: KubernetesSandbox) -> list[str]:
    async with aclosing(sandbox.stdout_lines()) as lines:
        return [line async for line in lines]


async def test_a_sandbox_from_launch_to_close(
    backend: KubernetesBackend, kube: KubeStandIn, docker_host: str, tmp_path: Path
) -> None:
    script = (
        "cat /app/assets/in.txt; cat /app/trajectory.json; echo; id -u; "
        "echo result > /app/results/r.txt; ln -s /etc/passwd /app/results/link; "
        'echo saved > "$HOME/session"; echo oops >&2; exit 3'
    )
    sandbox = await backend.launch(spec(script))
    await sandbox.put_files("/app/assets", {"in.txt": b"input\n"})
    await sandbox.put_files("/", {"app/trajectory.json": b"{}"})
    with pytest.raises(Exception, match="only under"):
        await sandbox.put_files("/etc", {"x": b""})
    try:
        await sandbox.start()
        assert await lines_of(sandbox) == ["input", "{}", "1000"]
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


async def test_a_timeout_stops_the_agent_and_keeps_its_results(
    backend: KubernetesBackend, tmp_path: Path
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


async def test_an_image_the_node_cannot_pull_fails_at_once(backend: KubernetesBackend) -> None:
    sandbox = await backend.launch(spec("true", image="registry.invalid/acme/missing:v1"))
    try:
        await sandbox.start()
        with pytest.raises(ImageNotFound) as missing:
            await lines_of(sandbox)
        assert missing.value.image == "registry.invalid/acme/missing:v1"
    finally:
        await sandbox.close()


async def test_recovery_removes_the_pods_of_dead_servers(
    backend: KubernetesBackend, kube: KubeStandIn
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


async def test_the_permission_check_names_what_is_missing(
    backend: KubernetesBackend, kube: KubeStandIn
) -> None:
    assert await backend.ping()
    assert await backend.missing_permissions() == []
    kube.access.denied.update({("get", "pods/log"), ("create", "networkpolicies")})
    assert await backend.missing_permissions() == ["get pods/log", "create networkpolicies"]
