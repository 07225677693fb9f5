"""The Docker backend against a real engine and the offline test images."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import anyio
import httpx
import pytest

from proxy.sandbox.base import (
    LABEL_OWNER,
    LABEL_SERVER,
    ExitStatus,
    ImageNotFound,
    Mount,
    Orphans,
    SandboxLimitError,
    SandboxSpec,
    SandboxStateError,
    SkipReason,
)
from proxy.sandbox.docker import DockerBackend, DockerSandbox
from proxy.sandbox.dockerapi import ContainerPolicy
from tests.sandbox.conftest import BUSYBOX, SESSION, SESSION_LABEL, TESTENV
from tests.support.blobs import StreamedBytes

pytestmark = [pytest.mark.docker, pytest.mark.anyio]


def _spec(argv: list[str], **overrides: object) -> SandboxSpec:
    fields: dict[str, object] = {
        "run_id": "engine-test",
        "collection": "tests",
        "image": BUSYBOX,
        "argv": argv,
    }
    labels = {SESSION_LABEL: SESSION, **overrides.pop("labels", {})}  # type: ignore[dict-item]
    return SandboxSpec(**{**fields, **overrides, "labels": labels})  # type: ignore[arg-type]


async def _run(sandbox: DockerSandbox, timeout: float = 30) -> tuple[list[str], ExitStatus]:
    """Start, read stdout while waiting (as the run lifecycle does), return both."""
    lines: list[str] = []
    await sandbox.start()

    async def read() -> None:
        lines.extend([line async for line in sandbox.stdout_lines()])

    with anyio.fail_after(timeout):
        async with anyio.create_task_group() as group:
            group.start_soon(read)
            status = await sandbox.wait(timeout=timeout)
    return lines, status


def _state(engine: httpx.Client, sandbox: DockerSandbox) -> dict[str, object]:
    state: dict[str, object] = engine.get(f"/containers/{sandbox.container_id}/json").json()[
        "State"
    ]
    return state


async def test_files_in_lines_out_and_exit_code(docker: DockerBackend, tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text('cat /app/in/a.txt\necho "$GREETING"\necho oops >&2\nexit 7\n')
    sandbox = await docker.launch(_spec(["sh", "/app/in/run.sh"], env={"GREETING": "hello"}))
    try:
        await sandbox.put_files("/app/in", {"a.txt": "ünïcode line\n".encode(), "run.sh": script})
        lines, status = await _run(sandbox)
    finally:
        await sandbox.close()
    assert lines == ["ünïcode line", "hello"]
    assert status == ExitStatus(exit_code=7, oom_killed=False, timed_out=False)
    assert sandbox.stderr_tail() == "oops\n"


async def test_streamed_files_are_put(docker: DockerBackend) -> None:
    sandbox = await docker.launch(_spec(["cat", "/app/in/streamed.txt", "/app/in/given.txt"]))
    try:
        await sandbox.put_files(
            "/app/in",
            {"streamed.txt": StreamedBytes((b"streamed ", b"line\n")), "given.txt": b"given\n"},
        )
        lines, status = await _run(sandbox)
    finally:
        await sandbox.close()
    assert (lines, status.exit_code) == (["streamed line", "given"], 0)


async def test_non_root_user_owns_its_workdir_on_the_debian_image(
    docker: DockerBackend, tmp_path: Path
) -> None:
    script = "id -u; mkdir -p /app/results && echo done > /app/results/r.txt && cat in/x"
    spec = _spec(["bash", "-c", script], image=TESTENV, user="1000:1000")
    sandbox = await docker.launch(spec)
    try:
        await sandbox.put_files("/app", {"in/x": b"given"})
        lines, status = await _run(sandbox)
        report = await sandbox.copy_out("/app/results", tmp_path / "out", 1 << 20, 10)
    finally:
        await sandbox.close()
    assert (lines, status.exit_code) == (["1000", "given"], 0)
    assert [(f.path, f.size) for f in report.files] == [("r.txt", 5)]


async def test_timeout_kills_the_container(docker: DockerBackend, engine: httpx.Client) -> None:
    sandbox = await docker.launch(_spec(["sleep", "300"]))
    try:
        await sandbox.start()
        started = time.monotonic()
        status = await sandbox.wait(timeout=1)
        elapsed = time.monotonic() - started
        state = _state(engine, sandbox)
    finally:
        await sandbox.close()
    assert status.timed_out and status.exit_code == 137 and not status.oom_killed
    assert elapsed < 15
    assert state["Running"] is False


async def test_memory_limit_oom_is_reported(docker: DockerBackend) -> None:
    spec = _spec(
        ["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
        memory_bytes=32 * 1024 * 1024,
    )
    sandbox = await docker.launch(spec)
    try:
        _, status = await _run(sandbox)
    finally:
        await sandbox.close()
    assert status.oom_killed and status.exit_code == 137 and not status.timed_out


async def test_limits_the_engine_refuses_are_limit_errors(docker: DockerBackend) -> None:
    with pytest.raises(SandboxLimitError, match=r"[Mm]emory"):
        await docker.launch(_spec(["true"], memory_bytes=1024))


async def test_more_cpus_than_the_engine_has_are_lowered(
    docker: DockerBackend, engine: httpx.Client
) -> None:
    cpus = engine.get("/info").json()["NCPU"]
    sandbox = await docker.launch(_spec(["true"], cpus=cpus + 3))
    try:
        host = engine.get(f"/containers/{sandbox.container_id}/json").json()["HostConfig"]
    finally:
        await sandbox.close()
    assert host["NanoCpus"] == cpus * 10**9


async def test_no_network_means_only_loopback(docker: DockerBackend) -> None:
    sandbox = await docker.launch(_spec(["ls", "/sys/class/net"], network_enabled=False))
    try:
        lines, status = await _run(sandbox)
    finally:
        await sandbox.close()
    assert (lines, status.exit_code) == (["lo"], 0)


async def test_read_only_mount_and_dropped_capabilities(
    docker: DockerBackend, tmp_path: Path
) -> None:
    (tmp_path / "asset.txt").write_text("asset\n")
    script = (
        "cat /mnt/in/asset.txt; touch /mnt/in/x 2>/dev/null || echo read-only;"
        " grep CapEff /proc/self/status"
    )
    spec = _spec(["sh", "-c", script], mounts=[Mount(tmp_path, "/mnt/in")])
    sandbox = await docker.launch(spec)
    try:
        lines, status = await _run(sandbox)
    finally:
        await sandbox.close()
    assert status.exit_code == 0
    assert lines[:2] == ["asset", "read-only"]
    assert int(lines[2].split()[1], 16) == 0  # no capability at all, root or not


async def test_a_policy_gives_back_the_capabilities_it_names(docker_host: str) -> None:
    docker = DockerBackend.from_url(docker_host, policy=ContainerPolicy(("CHOWN", "KILL")))
    sandbox = await docker.launch(_spec(["sh", "-c", "grep CapEff /proc/self/status"]))
    try:
        lines, _ = await _run(sandbox)
    finally:
        await sandbox.close()
        await docker.aclose()
    # Capability bit numbers from linux/capability.h: CHOWN 0, KILL 5.
    assert int(lines[0].split()[1], 16) == 1 << 0 | 1 << 5


async def test_a_read_only_root_leaves_app_and_tmp_writable_and_readable_after_exit(
    docker_host: str, engine: httpx.Client, tmp_path: Path
) -> None:
    docker = DockerBackend.from_url(docker_host, policy=ContainerPolicy(read_only_rootfs=True))
    script = (
        "touch /etc/x 2>/dev/null || echo root-read-only;"
        " cat /app/in/given /tmp/home/given;"
        " mkdir -p /app/results && echo kept > /app/results/r.txt && echo t > /tmp/t && cat /tmp/t"
    )
    spec = _spec(["bash", "-c", script], image=TESTENV, run_id=f"ro-{uuid.uuid4().hex[:8]}")
    sandbox = await docker.launch(spec)
    try:
        await sandbox.put_files("/app/in", {"given": b"to app\n"})
        await sandbox.put_files("/tmp/home", {"given": b"to tmp\n"})
        lines, status = await _run(sandbox)
        report = await sandbox.copy_out("/app/results", tmp_path / "out", 1 << 20, 10)
        host = engine.get(f"/containers/{sandbox.container_id}/json").json()["HostConfig"]
    finally:
        await sandbox.close()
        await docker.aclose()
    assert (lines, status.exit_code) == (["root-read-only", "to app", "to tmp", "t"], 0)
    assert [(f.path, f.size) for f in report.files] == [("r.txt", 5)]
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert [m["Target"] for m in host["Mounts"] if m["Type"] == "volume"] == ["/app", "/tmp"]
    # The container's volumes went with it.
    label = json.dumps({"label": [f"jetty-proxy.run-id={spec.run_id}"]})
    assert engine.get("/volumes", params={"filters": label}).json()["Volumes"] in (None, [])


async def test_copy_out_skips_symlink_and_file_over_the_cap(
    docker: DockerBackend, tmp_path: Path
) -> None:
    script = (
        "mkdir -p /app/results/sub && cd /app/results && echo small > small.txt"
        " && echo nested > sub/n.txt && ln -s /etc/passwd passwd && ln -s /etc etc"
        " && head -c 200000 /dev/zero > big.bin && mkfifo pipe"
    )
    sandbox = await docker.launch(_spec(["sh", "-c", script]))
    try:
        _, status = await _run(sandbox)
        report = await sandbox.copy_out("/app/results", tmp_path / "out", 100_000, 10)
        missing = await sandbox.copy_out("/app/nothing-here", tmp_path / "none", 100, 10)
    finally:
        await sandbox.close()
    assert status.exit_code == 0
    assert sorted((f.path, f.size) for f in report.files) == [("small.txt", 6), ("sub/n.txt", 7)]
    assert sorted((s.path, s.reason) for s in report.skipped) == [
        ("big.bin", SkipReason.TOO_LARGE),
        ("etc", SkipReason.SYMLINK),
        ("passwd", SkipReason.SYMLINK),
        ("pipe", SkipReason.SPECIAL),
    ]
    out = tmp_path / "out"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "small.txt",
        "sub",
        "sub/n.txt",
    ]
    assert missing.files == [] and missing.skipped == []


async def test_missing_program_exits_127_and_close_twice(
    docker: DockerBackend, engine: httpx.Client
) -> None:
    # Every container starts through /bin/sh (see `rerun`), so a missing program is the
    # shell's exit 127 with its message on stderr, not an engine error at start.
    sandbox = await docker.launch(_spec(["/no/such/agent"]))
    lines, status = await _run(sandbox)
    assert (lines, status.exit_code) == ([], 127)
    assert "/no/such/agent" in sandbox.stderr_tail()
    await sandbox.close()
    await sandbox.close()
    assert engine.get(f"/containers/{sandbox.container_id}/json").status_code == 404


async def test_close_while_running_ends_the_output_stream(docker: DockerBackend) -> None:
    sandbox = await docker.launch(_spec(["sh", "-c", "echo up; sleep 300"]))
    try:
        await sandbox.start()
        lines = sandbox.stdout_lines()
        with anyio.fail_after(15):
            assert await lines.__anext__() == "up"
            await sandbox.close()
            assert [line async for line in lines] == []
    finally:
        await sandbox.close()


async def test_close_from_another_task_ends_a_running_reader_quietly(
    docker: DockerBackend,
) -> None:
    sandbox = await docker.launch(_spec(["sh", "-c", "echo up; sleep 300"]))
    seen: list[str] = []
    try:
        await sandbox.start()
        up = anyio.Event()

        async def read() -> None:
            async for line in sandbox.stdout_lines():
                seen.append(line)
                up.set()

        with anyio.fail_after(15):
            async with anyio.create_task_group() as group:
                group.start_soon(read)
                await up.wait()
                await sandbox.close()
    finally:
        await sandbox.close()
    assert seen == ["up"]


async def test_missing_image_is_not_pulled(docker: DockerBackend) -> None:
    with pytest.raises(ImageNotFound):
        await docker.check_image("jetty-test/not-built:never")
    with pytest.raises(ImageNotFound):
        await docker.launch(_spec(["true"], image="jetty-test/not-built:never"))
    await docker.check_image(BUSYBOX)


async def test_remove_orphans_removes_labelled_leftovers(docker: DockerBackend) -> None:
    # An owner of its own, so that other sessions sharing this engine are left alone.
    owner = {LABEL_OWNER: f"orphans-test-{uuid.uuid4().hex}"}
    other = {LABEL_OWNER: f"someone-else-{uuid.uuid4().hex}"}
    kept = await docker.launch(_spec(["sleep", "300"], run_id="kept", labels=owner))
    orphans = [
        await docker.launch(_spec(["sleep", "300"], run_id=f"gone-{n}", labels=owner))
        for n in range(2)
    ]
    foreign = await docker.launch(_spec(["sleep", "300"], run_id="foreign", labels=other))
    # Launched by another server of the same installation that is still alive.
    alive = {**owner, LABEL_SERVER: "alive"}
    sibling = await docker.launch(_spec(["sleep", "300"], run_id="sibling", labels=alive))
    try:
        await orphans[0].start()  # a running one, and one only created
        removed = await docker.remove_orphans(Orphans({"kept"}, owner[LABEL_OWNER], {"alive"}))
        assert sorted(removed) == ["gone-0", "gone-1"]
        assert await docker.remove_orphans(Orphans({"kept"}, owner[LABEL_OWNER])) == ["sibling"]
        assert await docker.remove_orphans(Orphans({"kept"}, owner[LABEL_OWNER])) == []
        assert await docker.remove_orphans(Orphans(owner=other[LABEL_OWNER])) == ["foreign"]
    finally:
        for sandbox in (kept, *orphans, foreign, sibling):
            await sandbox.close()


async def test_rerun_keeps_the_filesystem_and_reads_only_the_new_output(
    docker: DockerBackend, engine: httpx.Client
) -> None:
    first = "echo one; echo turn-one > /app/state.txt; echo err-one >&2"
    sandbox = await docker.launch(_spec(["sh", "-c", first], env={"TOKEN": "first", "OLD": "x"}))
    try:
        lines, status = await _run(sandbox)
        assert (lines, status.exit_code) == (["one"], 0)
        second = 'cat /app/state.txt /app/in/note.txt; echo "$TOKEN ${OLD:-unset}"; echo err-2 >&2'
        await sandbox.rerun(["sh", "-c", second], {"TOKEN": "it's second"})
        await sandbox.put_files("/app/in", {"note.txt": b"put after rerun\n"})
        lines, status = await _run(sandbox)
        assert lines == ["turn-one", "put after rerun", "it's second unset"]
        assert status.exit_code == 0
        assert sandbox.stderr_tail() == "err-2\n"
        # The script that carried the new environment removed itself.
        await sandbox.rerun(["sh", "-c", "ls -a /tmp; exit 3"], {})
        lines, status = await _run(sandbox)
        assert ".jetty-rerun" not in lines
        assert status.exit_code == 3
    finally:
        await sandbox.close()


async def test_rerun_refuses_a_running_or_closed_sandbox(docker: DockerBackend) -> None:
    sandbox = await docker.launch(_spec(["sleep", "30"]))
    try:
        await sandbox.start()
        with pytest.raises(SandboxStateError, match="still running"):
            await sandbox.rerun(["true"], {})
        with pytest.raises(SandboxStateError, match="variable name"):
            await sandbox.rerun(["true"], {"NOT-A-NAME": "x"})
    finally:
        await sandbox.close()
    with pytest.raises(SandboxStateError, match="closed"):
        await sandbox.rerun(["true"], {})
