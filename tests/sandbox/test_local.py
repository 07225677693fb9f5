"""The local backend with real processes, with and without bubblewrap."""

from __future__ import annotations

import itertools
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from proxy.sandbox.base import (
    Mount,
    SandboxError,
    SandboxSpec,
    SandboxStateError,
    SkipReason,
    UnsafePathError,
)
from proxy.sandbox.bwrap import bwrap_command
from proxy.sandbox.local import LocalBackend, LocalSandbox

pytestmark = pytest.mark.anyio

HAVE_BWRAP = shutil.which("bwrap") is not None


@pytest.fixture(
    params=[
        pytest.param(False, id="plain"),
        pytest.param(
            True,
            id="bwrap",
            marks=pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap is not installed"),
        ),
    ]
)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LocalBackend]:
    local = LocalBackend(tmp_path / "runs", use_bwrap=bool(request.param), kill_grace=0.5)
    yield local
    await local.aclose()


def _spec(script: str, **overrides: object) -> SandboxSpec:
    fields: dict[str, object] = {
        "run_id": "r1",
        "collection": "c",
        "image": "ignored",
        "argv": ["sh", "-c", script],
    }
    return SandboxSpec(**{**fields, **overrides})  # type: ignore[arg-type]


async def _run(sandbox: LocalSandbox, timeout: float = 10) -> list[str]:
    await sandbox.start()
    with anyio.fail_after(timeout):
        return [line async for line in sandbox.stdout_lines()]


async def test_lines_exit_code_stderr_and_a_clean_environment(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVIDER_SECRET", "do-not-leak")
    script = (
        'cat in/a.txt; echo "$GREETING"; echo "${PROVIDER_SECRET:-clean}"; echo err >&2; exit 3'
    )
    sandbox = await backend.launch(_spec(script, env={"GREETING": "hi"}))
    try:
        await sandbox.put_files("/app/in", {"a.txt": b"from a file\n"})
        lines = await _run(sandbox)
        status = await sandbox.wait(timeout=5)
    finally:
        await sandbox.close()
    assert lines == ["from a file", "hi", "clean"]
    assert (status.exit_code, status.timed_out, status.oom_killed) == (3, False, False)
    assert sandbox.stderr_tail() == "err\n"


async def test_app_paths_are_mapped(backend: LocalBackend, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "note.txt").write_text("mounted\n")
    # Plain mode rewrites argv items and env values that start with /app (or a mount's
    # path), not paths inside a shell string: scripts use $JETTY_APP_DIR or relative paths.
    script = (
        'pwd; echo "$JETTY_APP_DIR"; cat "$NOTE"; cat "$1"; echo out > "$JETTY_APP_DIR/results/r"'
    )
    spec = _spec(
        "",
        argv=["sh", "-c", script, "sh", "/app/in/x.txt"],
        env={"NOTE": "/run/shared/note.txt"},
        mounts=[Mount(shared, "/run/shared")],
        workdir="/app/work",
    )
    sandbox = await backend.launch(spec)
    try:
        await sandbox.put_files(
            "/app", {"in/x.txt": b"put\n", "results/.keep": b"", "work/.k": b""}
        )
        lines = await _run(sandbox)
        assert (await sandbox.wait(5)).exit_code == 0
        report = await sandbox.copy_out("/app/results", tmp_path / "out", 1000, 10)
    finally:
        await sandbox.close()
    app = "/app" if backend.isolated else str(sandbox.app_dir)
    assert lines == [f"{app}/work", app, "mounted", "put"]
    assert sorted(f.path for f in report.files) == [".keep", "r"]
    assert not sandbox.run_dir.exists()


async def test_timeout_kills_the_whole_process_group(backend: LocalBackend) -> None:
    sandbox = await backend.launch(_spec("sleep 300 & echo $!; sleep 300"))
    try:
        await sandbox.start()
        lines = sandbox.stdout_lines()
        child = int(await lines.__anext__())
        started = time.monotonic()
        status = await sandbox.wait(timeout=0.3)
        assert time.monotonic() - started < 5
        await lines.aclose()
    finally:
        await sandbox.close()
    assert status.timed_out
    assert status.exit_code in (128 + 15, 128 + 9)
    if not backend.isolated:  # inside bwrap the pid is one of its own namespace
        await _assert_dies(child)


async def test_a_term_ignoring_process_is_killed_after_the_grace(backend: LocalBackend) -> None:
    sandbox = await backend.launch(_spec("trap '' TERM; echo ready; sleep 300"))
    try:
        await sandbox.start()
        lines = sandbox.stdout_lines()
        assert await lines.__anext__() == "ready"
        status = await sandbox.wait(timeout=0.2)
        await lines.aclose()
    finally:
        await sandbox.close()
    assert status.timed_out
    # Plain: the shell ignores SIGTERM, so SIGKILL follows. Under bwrap, bwrap itself takes
    # the SIGTERM and its namespace dies with it.
    assert status.exit_code == (128 + 15 if backend.isolated else 128 + 9)


async def test_background_processes_die_with_the_main_one(backend: LocalBackend) -> None:
    if backend.isolated:
        pytest.skip("inside bwrap the pid namespace already guarantees this")
    sandbox = await backend.launch(_spec("sleep 300 & echo $!"))
    try:
        await sandbox.start()
        lines = sandbox.stdout_lines()
        child = int(await lines.__anext__())
        status = await sandbox.wait(timeout=5)
        await lines.aclose()
    finally:
        await sandbox.close()
    assert status.exit_code == 0 and not status.timed_out
    await _assert_dies(child)


async def test_copy_out_skips_links_out_and_applies_caps(
    backend: LocalBackend, tmp_path: Path
) -> None:
    script = (
        "mkdir -p results/sub && cd results && echo a > a.txt && echo bb > sub/b.txt"
        " && ln -s /etc/passwd passwd && ln -s /etc etc && head -c 5000 /dev/zero > big"
    )
    sandbox = await backend.launch(_spec(script))
    try:
        await sandbox.put_files("/app", {"results/.keep": b""})
        await _run(sandbox)
        assert (await sandbox.wait(5)).exit_code == 0
        report = await sandbox.copy_out("/app/results", tmp_path / "out", 100, 10)
        capped = await sandbox.copy_out("/app/results", tmp_path / "out2", 100, 1)
        with pytest.raises(UnsafePathError, match="only maps paths under /app"):
            await sandbox.copy_out("/etc", tmp_path / "out3", 100, 10)
    finally:
        await sandbox.close()
    assert sorted(f.path for f in report.files) == [".keep", "a.txt", "sub/b.txt"]
    assert sorted((s.path, s.reason) for s in report.skipped) == [
        ("big", SkipReason.TOO_LARGE),
        ("etc", SkipReason.SYMLINK),
        ("passwd", SkipReason.SYMLINK),
    ]
    assert not (tmp_path / "out" / "passwd").exists()
    assert len(capped.files) == 1
    assert SkipReason.TOO_MANY_FILES in {s.reason for s in capped.skipped}


async def test_state_errors_and_unsafe_names(backend: LocalBackend) -> None:
    sandbox = await backend.launch(_spec("true"))
    try:
        with pytest.raises(SandboxStateError):
            await sandbox.wait(1)
        for bad in ("../x", "/etc/x", "a\\b", "a\0b", ""):
            with pytest.raises(UnsafePathError):
                await sandbox.put_files("/app", {bad: b""})
        with pytest.raises(UnsafePathError):
            await sandbox.put_files("/etc", {"x": b""})
        await sandbox.start()
        with pytest.raises(SandboxStateError):
            await sandbox.start()
        with pytest.raises(SandboxStateError):
            await sandbox.put_files("/app", {"late": b""})
        assert (await sandbox.wait(5)).exit_code == 0
    finally:
        await sandbox.close()
    await sandbox.close()


async def test_close_without_start_and_twice(backend: LocalBackend) -> None:
    sandbox = await backend.launch(_spec("true"))
    await sandbox.close()
    await sandbox.close()
    assert not sandbox.run_dir.exists()
    with pytest.raises(SandboxStateError):
        await sandbox.start()


@pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap is not installed")
async def test_bwrap_mounts_inside_read_only_host_dirs(tmp_path: Path) -> None:
    (tmp_path / "tool").write_text("agent cli\n")
    spec = _spec(
        "cat /usr/share/jetty-test/agents/tool; ls /usr/share | grep -c . ; touch /usr/x || true",
        mounts=[Mount(tmp_path, "/usr/share/jetty-test/agents")],
    )
    sandbox = await LocalBackend(tmp_path / "runs", use_bwrap=True).launch(spec)
    try:
        lines = await _run(sandbox)
        assert (await sandbox.wait(5)).exit_code == 0
    finally:
        await sandbox.close()
    assert lines[0] == "agent cli"
    # /usr/share's own entries are all still there, next to the new mount point.
    assert int(lines[1]) == len(list(Path("/usr/share").iterdir())) + 1
    assert not Path("/usr/share/jetty-test").exists()
    assert not Path("/usr/x").exists()


async def test_missing_program_is_a_sandbox_error(tmp_path: Path) -> None:
    local = LocalBackend(tmp_path, use_bwrap=False)
    sandbox = await local.launch(_spec("", argv=["/nonexistent/agent"]))
    with pytest.raises(SandboxError, match="could not start"):
        await sandbox.start()
    await sandbox.close()


async def test_remove_orphans_kills_and_removes_unkept_runs(tmp_path: Path) -> None:
    local = LocalBackend(tmp_path, use_bwrap=False)
    kept = await local.launch(_spec("true", run_id="kept"))
    orphan = await local.launch(_spec("echo $$; sleep 300", run_id="orphan"))
    await orphan.start()
    pid = int(await orphan.stdout_lines().__anext__())
    # A fresh backend on the same directory: what a restarted proxy would see.
    restarted = LocalBackend(tmp_path, use_bwrap=False)
    assert await restarted.remove_orphans({"kept"}) == ["orphan"]
    with anyio.fail_after(5):
        status = await orphan.wait()
    assert status.exit_code == 128 + 9
    await _assert_dies(pid)
    assert kept.run_dir.exists() and not orphan.run_dir.exists()
    await orphan.close()
    await kept.close()


async def test_without_bwrap_the_backend_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    local = LocalBackend(tmp_path, use_bwrap=False)
    for run in ("a", "b"):
        await (await local.launch(_spec("true", run_id=run))).close()
    warnings = [r for r in caplog.records if "NOT isolated" in r.getMessage()]
    assert len(warnings) == 1


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its reaper counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def _assert_dies(pid: int) -> None:
    """SIGKILL is delivered asynchronously: give the kernel a moment to finish the process."""
    with anyio.fail_after(5):
        while _alive(pid):
            await anyio.sleep(0.01)


def test_alive_helper() -> None:
    assert _alive(os.getpid())


def test_bwrap_command_shape(tmp_path: Path) -> None:
    spec = _spec("true", mounts=[Mount(tmp_path, "/run/in"), Mount("/w", "/app/w", False)])
    argv = bwrap_command("bwrap", spec, tmp_path / "app", tmp_path / "home")
    assert argv[-6:] == ["--chdir", "/app", "--", "sh", "-c", "true"]
    assert "--unshare-net" in argv and argv[argv.index("--cap-drop") + 1] == "ALL"
    pairs = list(itertools.pairwise(argv))
    assert ("--bind", str(tmp_path / "app")) in pairs
    assert ("--ro-bind", str(tmp_path)) in pairs and ("--bind", "/w") in pairs
    assert ("--ro-bind", "/root") not in pairs and ("--ro-bind", "/home") not in pairs
    assert ("--ro-bind", "/usr") in pairs
    networked = bwrap_command("bwrap", _spec("true", network_enabled=True), tmp_path, tmp_path)
    assert "--unshare-net" not in networked
