"""Warm Docker sandboxes against a real engine: started before their run, claimed by it."""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import httpx
import pytest

from proxy.sandbox.base import (
    LABEL_OWNER,
    LABEL_POOL,
    LABEL_RUN_ID,
    ExitStatus,
    Mount,
    Orphans,
    SandboxError,
    SandboxSpec,
    SandboxStateError,
)
from proxy.sandbox.claims import CLAIM_MOUNT
from proxy.sandbox.docker import DockerBackend, DockerWarmSandbox
from proxy.sandbox.docker_sandbox import DockerSandbox
from proxy.sandbox.dockerapi import ContainerPolicy
from proxy.sandbox.warm import Standby, Takeover, WarmSpec
from tests.sandbox.conftest import BUSYBOX, SESSION, SESSION_LABEL, TESTENV

pytestmark = [pytest.mark.docker, pytest.mark.anyio]

SECRET = "jrt-secret-token-0123456789"


def _warm(**overrides: object) -> WarmSpec:
    fields: dict[str, object] = {
        "id": f"warm-{uuid.uuid4().hex[:8]}",
        "pool": "tests",
        "image": BUSYBOX,
        "cpus": 1.0,
        "memory_bytes": 256 * 1024 * 1024,
        "labels": {SESSION_LABEL: SESSION},
    }
    return WarmSpec(**{**fields, **overrides})  # type: ignore[arg-type]


def _run_spec(warm: WarmSpec, argv: list[str], **overrides: object) -> SandboxSpec:
    fields: dict[str, object] = {
        "run_id": "run-1",
        "collection": "tests",
        "image": warm.image,
        "argv": argv,
        "env": {"RUN_TOKEN": SECRET},
        "cpus": warm.cpus,
        "memory_bytes": warm.memory_bytes,
        "mounts": tuple(warm.mounts),
    }
    return SandboxSpec(**{**fields, **overrides})  # type: ignore[arg-type]


async def _run(sandbox: DockerSandbox) -> tuple[list[str], ExitStatus]:
    lines: list[str] = []
    await sandbox.start()

    async def read() -> None:
        lines.extend([line async for line in sandbox.stdout_lines()])

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(read)
            status = await sandbox.wait(timeout=30)
    return lines, status


def _container(engine: httpx.Client, container_id: str) -> dict[str, object]:
    response = engine.get(f"/containers/{container_id}/json")
    response.raise_for_status()
    found: dict[str, object] = response.json()
    return found


async def test_a_warm_sandbox_holds_nothing_of_a_run_until_claimed(
    docker: DockerBackend, engine: httpx.Client, tmp_path: Path
) -> None:
    (tmp_path / "tool.txt").write_text("mounted\n")
    spec = _warm(mounts=(Mount(tmp_path, "/opt/tools"),))
    warm = await docker.launch_warm(spec)
    try:
        assert isinstance(warm, DockerWarmSandbox)
        info = _container(engine, warm.container_id)
        state, config = info["State"], info["Config"]
        assert isinstance(state, dict) and isinstance(config, dict)
        assert state["Running"] is True
        assert config["Labels"][LABEL_POOL] == "tests"
        assert config["Labels"][LABEL_RUN_ID] == spec.id
        # Nothing of any run: no token, no command of its own, only the image's environment.
        assert SECRET not in str(info)
        assert all(not entry.startswith("RUN_TOKEN=") for entry in config["Env"] or [])

        argv = ["sh", "-c", 'echo "pid $$ token $RUN_TOKEN"; cat /opt/tools/tool.txt /app/in.txt']
        sandbox = await warm.claim(_run_spec(spec, argv))
        await sandbox.put_files("/app", {"in.txt": b"put after the claim\n"})
        lines, status = await _run(sandbox)
        assert lines == [f"pid 1 token {SECRET}", "mounted", "put after the claim"]
        assert status == ExitStatus(0)
        # Reruns work as on any sandbox: same files, a new command.
        await sandbox.rerun(["sh", "-c", "cat /app/in.txt; echo ${RUN_TOKEN:-unset}"], {})
        lines, status = await _run(sandbox)
        assert (lines, status.exit_code) == (["put after the claim", "unset"], 0)
        await warm.close()  # a no-op once claimed: the run's sandbox owns the container
        assert _container(engine, warm.container_id)["Id"] == warm.container_id
        await sandbox.close()
    finally:
        await warm.close()
    assert engine.get(f"/containers/{warm.container_id}/json").status_code == 404


async def test_a_claim_needs_the_same_shape_and_happens_once(docker: DockerBackend) -> None:
    spec = _warm()
    warm = await docker.launch_warm(spec)
    try:
        misfits = [
            _run_spec(spec, ["true"], image=TESTENV),
            _run_spec(spec, ["true"], cpus=2.0),
            _run_spec(spec, ["true"], network_enabled=True),
            _run_spec(spec, ["true"], mounts=(Mount("/tmp", "/opt/other"),)),
        ]
        for misfit in misfits:
            with pytest.raises(SandboxStateError, match="does not fit"):
                await warm.claim(misfit)
        sandbox = await warm.claim(_run_spec(spec, ["true"]))
        try:
            with pytest.raises(SandboxStateError, match="claimed"):
                await warm.claim(_run_spec(spec, ["true"]))
        finally:
            await sandbox.close()
    finally:
        await warm.close()


async def test_a_warm_sandbox_that_stopped_waiting_cannot_be_claimed(
    docker: DockerBackend, engine: httpx.Client
) -> None:
    warm = await docker.launch_warm(_warm())
    try:
        engine.post(f"/containers/{warm.container_id}/kill").raise_for_status()
        engine.post(f"/containers/{warm.container_id}/wait").raise_for_status()
        with pytest.raises(SandboxError, match="no longer waits"):
            await warm.claim(_run_spec(warm.spec, ["true"]))
    finally:
        await warm.close()


async def test_a_long_start_script_and_a_read_only_root(docker_host: str) -> None:
    docker = DockerBackend.from_url(docker_host, policy=ContainerPolicy(read_only_rootfs=True))
    try:
        warm = await docker.launch_warm(_warm(image=TESTENV))
        # Far more than a pipe holds (the rest is written as the shell reads it), in values
        # each under the kernel's limit on one (128 KiB).
        env = {f"BIG{n}": str(n) * (100 * 1024) for n in range(3)}
        argv = ["sh", "-c", 'echo "${#BIG0} ${#BIG1} ${#BIG2}"; touch /app/ok && echo rw']
        sandbox = await warm.claim(_run_spec(warm.spec, argv, env=env))
        try:
            lines, status = await _run(sandbox)
            assert (lines, status.exit_code) == (["102400 102400 102400", "rw"], 0)
        finally:
            await sandbox.close()
    finally:
        await docker.aclose()


async def test_closing_and_recovery_remove_warm_containers_and_their_claims(
    docker_host: str, engine: httpx.Client, tmp_path: Path
) -> None:
    claims = tmp_path / "claims"
    docker = DockerBackend.from_url(docker_host, claims_dir=claims)
    owner = f"warm-test-{uuid.uuid4().hex}"
    try:
        closed = await docker.launch_warm(_warm(labels={SESSION_LABEL: SESSION}))
        left = await docker.launch_warm(
            _warm(id="warm-left", labels={SESSION_LABEL: SESSION, LABEL_OWNER: owner})
        )
        assert len(list(claims.iterdir())) == 2
        binds = _container(engine, left.container_id)["HostConfig"]
        assert isinstance(binds, dict)
        assert {m["Target"] for m in binds["Mounts"]} >= {CLAIM_MOUNT}
        await closed.close()
        assert engine.get(f"/containers/{closed.container_id}/json").status_code == 404
        assert len(list(claims.iterdir())) == 1
        # A crashed server's warm containers: recovery removes them and their FIFOs.
        assert await docker.remove_orphans(Orphans(owner=owner)) == ["warm-left"]
        assert engine.get(f"/containers/{left.container_id}/json").status_code == 404
        assert list(claims.iterdir()) == []
    finally:
        await docker.aclose()


AGENT_TOKEN = "jrt-standby-token-9876543210"
# A standby that says it is up, then takes its run from stdin (after the takeover's prepare
# wrote its file) and exits with a status of its own.
STANDBY = Standby(
    [
        "sh",
        "-c",
        'echo "standby up" >&2; read first; cat /app/results/in.txt;'
        ' echo "took $first with $AGENT_TOKEN as pid-1-child $PPID"; read second;'
        ' echo "then $second"; exit 7',
    ],
    {"AGENT_TOKEN": AGENT_TOKEN},
)
PREPARE = "mkdir -p /app/results && printf '%s\\n' prepared > /app/results/in.txt"


async def test_a_run_takes_over_the_standby_after_its_prepare(
    docker: DockerBackend, engine: httpx.Client
) -> None:
    spec = _warm(standby=STANDBY)
    warm = await docker.launch_warm(spec)
    try:
        # The standby's environment is not in the container's configuration.
        assert AGENT_TOKEN not in str(_container(engine, warm.container_id))
        takeover = Takeover(PREPARE, b"hello\nworld\n")
        sandbox = await warm.claim(_run_spec(spec, ["sh", "-c", "echo own"]), takeover)
        lines, status = await _run(sandbox)
        assert lines == [
            "prepared",
            f"took hello with {AGENT_TOKEN} as pid-1-child 1",
            "then world",
        ]
        assert status == ExitStatus(7)
        await sandbox.close()
    finally:
        await warm.close()


async def test_a_claim_without_takeover_stops_the_standby(docker: DockerBackend) -> None:
    spec = _warm(standby=STANDBY)
    warm = await docker.launch_warm(spec)
    try:
        with anyio.fail_after(10):  # the standby is up (it then waits on its input)
            while "standby up" not in await _stderr_of(docker, warm):
                await anyio.sleep(0.05)
        own = ["sh", "-c", 'echo "own $RUN_TOKEN"; ps -o args | grep -c "[r]ead first"']
        sandbox = await warm.claim(_run_spec(spec, own))
        lines, status = await _run(sandbox)
        assert lines == [f"own {SECRET}", "0"]  # no standby process left
        assert status.exit_code == 1  # grep -c found nothing
        await sandbox.close()
    finally:
        await warm.close()


async def test_a_standby_that_exited_before_the_claim_leaves_the_runs_own_command(
    docker: DockerBackend,
) -> None:
    spec = _warm(standby=Standby(["sh", "-c", "exit 3"]))
    warm = await docker.launch_warm(spec)
    try:
        await anyio.sleep(0.5)
        own = ["sh", "-c", 'echo "own $RUN_TOKEN"']
        sandbox = await warm.claim(_run_spec(spec, own), Takeover(PREPARE, b"ignored\n"))
        lines, status = await _run(sandbox)
        assert (lines, status) == ([f"own {SECRET}"], ExitStatus(0))
        await sandbox.close()
    finally:
        await warm.close()


async def test_a_standby_gets_an_input_larger_than_a_pipe_holds(docker: DockerBackend) -> None:
    spec = _warm(standby=Standby(["wc", "-c"]))
    warm = await docker.launch_warm(spec)
    try:
        text = ("0123456789" * 30_000 + "\n").encode()  # 300 KB, past a pipe's 64 KiB
        sandbox = await warm.claim(_run_spec(spec, ["true"]), Takeover("", text))
        lines, status = await _run(sandbox)
        assert ([line.strip() for line in lines], status) == ([str(len(text))], ExitStatus(0))
        await sandbox.close()
    finally:
        await warm.close()


async def test_a_takeover_needs_a_standby(docker: DockerBackend) -> None:
    spec = _warm()
    warm = await docker.launch_warm(spec)
    try:
        with pytest.raises(SandboxStateError, match="no standby"):
            await warm.claim(_run_spec(spec, ["true"]), Takeover("", b"x"))
    finally:
        await warm.close()


async def _stderr_of(docker: DockerBackend, warm: DockerWarmSandbox) -> str:
    response = await docker._engine.request(
        "GET", f"/containers/{warm.container_id}/logs", params={"stderr": "1"}
    )
    return response.content.decode(errors="replace")
