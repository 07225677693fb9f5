"""The local backend with real processes, with and without bubblewrap."""

from __future__ import annotations

import itertools
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from proxy.sandbox.base import (
    LABEL_SERVER,
    Isolation,
    Mount,
    Orphans,
    SandboxError,
    SandboxLimitError,
    SandboxSpec,
    SandboxStateError,
    SkipReason,
    UnsafePathError,
)
from proxy.sandbox.bwrap import bwrap_command
from proxy.sandbox.local import LocalBackend, LocalSandbox
from proxy.sandbox.rundirs import MARK_ENV, installation_dir
from proxy.sandbox.selection import open_backend
from proxy.settings import Settings
from tests.support.blobs import StreamedBytes
from tests.support.ci import require_bwrap, unavailable

pytestmark = pytest.mark.anyio

HOME = "/tmp/jetty-home"  # the agent HOME the run engine sets


@pytest.fixture(params=[pytest.param(False, id="plain"), pytest.param(True, id="bwrap")])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LocalBackend]:
    if request.param:
        require_bwrap()
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
    # Plain mode rewrites sandbox paths in argv items and env values (see the next test);
    # $JETTY_APP_DIR and relative paths work in both modes.
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


async def test_streamed_files_are_put(backend: LocalBackend) -> None:
    sandbox = await backend.launch(_spec("cat /app/in/streamed.txt /app/in/given.txt"))
    try:
        await sandbox.put_files(
            "/app/in",
            {"streamed.txt": StreamedBytes((b"streamed ", b"line\n")), "given.txt": b"given\n"},
        )
        lines = await _run(sandbox)
    finally:
        await sandbox.close()
    assert lines == ["streamed line", "given"]


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


async def test_background_processes_die_with_the_main_one(tmp_path: Path) -> None:
    # Plain only: inside bwrap the pid namespace guarantees it, and $! is a pid of that
    # namespace, not one to look for on the host.
    backend = LocalBackend(tmp_path / "runs", use_bwrap=False, kill_grace=0.5)
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


async def test_bwrap_mounts_inside_read_only_host_dirs(tmp_path: Path) -> None:
    require_bwrap()
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
    # Launched by another server that is still alive: its own.
    sibling = await local.launch(_spec("true", run_id="sibling", labels={LABEL_SERVER: "alive"}))
    # A fresh backend on the same directory: what a restarted proxy would see.
    restarted = LocalBackend(tmp_path, use_bwrap=False)
    assert await restarted.remove_orphans(Orphans({"kept"}, live_servers={"alive"})) == ["orphan"]
    assert sibling.run_dir.exists()
    await sibling.close()
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


async def test_home_and_app_from_the_root_like_the_engine(
    backend: LocalBackend, tmp_path: Path
) -> None:
    script = (
        'cat "$HOME/.cfg/x" /app/trajectory.json; echo "$HOME"; pwd'
        ' && mkdir -p /app/results "$HOME" && echo r > /app/results/r && echo s > "$HOME/state"'
    )
    sandbox = await backend.launch(_spec(script, env={"HOME": HOME}))
    try:
        await sandbox.put_files(
            "/", {"app/trajectory.json": b"app\n", "tmp/jetty-home/.cfg/x": b"home\n"}
        )
        for outside in ("etc/passwd", "tmp/other/x", "tmp/jetty-homeless/x", "app"):
            with pytest.raises(UnsafePathError):
                await sandbox.put_files("/", {outside: b"no"})
        with pytest.raises(UnsafePathError):
            await sandbox.put_files("/etc", {})  # neither holds a root nor is in one
        lines = await _run(sandbox)
        assert (await sandbox.wait(5)).exit_code == 0
        home = await sandbox.copy_out(HOME, tmp_path / "home", 1000, 10)
        results = await sandbox.copy_out("/app/results", tmp_path / "results", 1000, 10)
        with pytest.raises(UnsafePathError, match="only maps paths under /app and HOME"):
            await sandbox.copy_out("/tmp/other", tmp_path / "other", 1000, 10)
    finally:
        await sandbox.close()
    if backend.isolated:
        assert lines == ["home", "app", HOME, "/app"]
    else:  # the host directories of the run: never the host's shared /tmp/jetty-home
        assert lines == ["home", "app", str(sandbox.home_dir), str(sandbox.app_dir)]
    assert sorted(f.path for f in home.files) == [".cfg/x", "state"]
    assert [f.path for f in results.files] == ["r"]


async def test_plain_mode_rewrites_sandbox_paths_inside_values(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.mkdir()
    words = "/app/x '/app' /application http://h/app /apps PATH=/opt/t/bin:/app:/usr/bin HOME/app"
    spec = _spec(
        f"echo {words}; echo $LIST; echo $HOME",
        env={"LIST": "/opt/t/bin:/bin,(/app)", "HOME": HOME + "/"},
        mounts=[Mount(tool, "/opt/t")],
    )
    sandbox = await LocalBackend(tmp_path / "runs", use_bwrap=False).launch(spec)
    try:
        lines = await _run(sandbox)
        assert (await sandbox.wait(5)).exit_code == 0
    finally:
        await sandbox.close()
    app, home = sandbox.app_dir, sandbox.home_dir
    assert lines == [
        f"{app}/x {app} /application http://h/app /apps PATH={tool}/bin:{app}:/usr/bin HOME/app",
        f"{tool}/bin:/bin,({app})",
        f"{home}/",
    ]


async def test_rerun_continues_in_the_same_files(backend: LocalBackend) -> None:
    first = 'echo first; echo "$ONE"; echo kept > state.txt; echo home > "$HOME/h"; echo e >&2'
    sandbox = await backend.launch(_spec(first, env={"ONE": "1", "HOME": HOME}))
    try:
        await sandbox.put_files("/app", {"in.txt": b"input\n"})
        assert await _run(sandbox) == ["first", "1"]
        assert (await sandbox.wait(5)).exit_code == 0
        assert sandbox.stderr_tail() == "e\n"
        with pytest.raises(SandboxLimitError):
            await sandbox.rerun([], {})

        second = 'cat state.txt in.txt more.txt "$HOME/h"; echo "${ONE:-unset} $TWO"; exit 4'
        await sandbox.rerun(["sh", "-c", second], {"TWO": "2", "HOME": HOME})
        assert sandbox.stderr_tail() == ""
        await sandbox.put_files("/", {"app/more.txt": b"more\n"})
        assert await _run(sandbox) == ["kept", "input", "more", "home", "unset 2"]
        assert (await sandbox.wait(5)).exit_code == 4

        await sandbox.rerun(["sh", "-c", "echo ready; sleep 300"], {})
        await sandbox.start()
        lines = sandbox.stdout_lines()
        assert await lines.__anext__() == "ready"
        with pytest.raises(SandboxStateError, match="still running"):
            await sandbox.rerun(["true"], {})
        with pytest.raises(SandboxStateError):
            await sandbox.put_files("/app", {"late": b""})
        await sandbox.kill()
        status = await sandbox.wait(5)
        await lines.aclose()
        assert status.exit_code in (128 + 15, 128 + 9) and not status.timed_out
        await sandbox.rerun(["sh", "-c", "echo again"], {})
        assert await _run(sandbox) == ["again"]
        assert (await sandbox.wait(5)).exit_code == 0
    finally:
        await sandbox.close()
    with pytest.raises(SandboxStateError, match="closed"):
        await sandbox.rerun(["true"], {})


async def test_rerun_before_any_start_replaces_the_command(backend: LocalBackend) -> None:
    sandbox = await backend.launch(_spec("echo old"))
    try:
        await sandbox.rerun(["sh", "-c", 'echo "new $X"'], {"X": "env"})
        assert await _run(sandbox) == ["new env"]
    finally:
        await sandbox.close()


async def test_files_are_never_written_through_what_a_run_left(
    backend: LocalBackend, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_text("host file\n")
    script = f"ln -s {outside} dir; ln -s {outside}/f file; ln {outside}/f hard || true; mkfifo p"
    sandbox = await backend.launch(_spec(script))
    try:
        await _run(sandbox)
        assert (await sandbox.wait(5)).exit_code == 0
        await sandbox.rerun(["true"], {})
        for name in ("dir/x", "file", "hard", "p"):
            if name == "hard" and backend.isolated:
                continue  # the host file is not visible inside bwrap: no link was made
            with pytest.raises(SandboxError, match="collides"):
                await sandbox.put_files("/app", {name: b"overwritten\n"})
        report = await sandbox.copy_out("/app/dir/sub", tmp_path / "out", 1000, 10)
    finally:
        await sandbox.close()
    assert [(s.path, s.reason) for s in report.skipped] == [(".", SkipReason.SYMLINK)]
    assert sorted(p.name for p in outside.iterdir()) == ["f"]
    assert (outside / "f").read_text() == "host file\n"


async def test_mounts_are_not_files_of_the_sandbox(backend: LocalBackend, tmp_path: Path) -> None:
    spec = _spec("true", mounts=[Mount(tmp_path, "/run/shared"), Mount(tmp_path, "/app/m")])
    sandbox = await backend.launch(spec)
    try:
        for where in ("/run/shared", "/app/m/sub"):
            with pytest.raises(UnsafePathError, match="mount"):
                await sandbox.put_files(where, {"x": b""})
            with pytest.raises(UnsafePathError, match="mount"):
                await sandbox.copy_out(where, tmp_path / "out", 10, 10)
    finally:
        await sandbox.close()
    assert list(tmp_path.iterdir()) == [tmp_path / "runs"]


@pytest.mark.parametrize("home", ["relative/home", "/", "/app", "/a/../b"])
async def test_a_home_of_no_directory_of_its_own_is_refused(tmp_path: Path, home: str) -> None:
    local = LocalBackend(tmp_path / "runs", use_bwrap=False)
    with pytest.raises(UnsafePathError):
        await local.launch(_spec("true", env={"HOME": home}))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


async def test_strays_in_a_new_session_die_and_do_not_hold_the_output(tmp_path: Path) -> None:
    # An agent's shell tool starts commands in sessions of their own: out of the group, and
    # here the stray even keeps stdout open. The output still ends when the main process does.
    local = LocalBackend(tmp_path / "runs", use_bwrap=False)
    sandbox = await local.launch(_spec("setsid sleep 300 & echo $!"))
    try:
        lines = await _run(sandbox, timeout=5)
        assert (await sandbox.wait(5)).exit_code == 0
    finally:
        await sandbox.close()
    await _assert_dies(int(lines[0]))


async def test_every_process_carries_the_run_mark(backend: LocalBackend) -> None:
    sandbox = await backend.launch(_spec(f'echo "${MARK_ENV}"', env={MARK_ENV: "forged"}))
    try:
        assert await _run(sandbox) == [sandbox.run_dir.name]
    finally:
        await sandbox.close()


async def test_selection_passes_the_bubblewrap_choice(tmp_path: Path) -> None:
    def settings(backend: str, bwrap: bool) -> Settings:
        absent = f"unix://{tmp_path}/absent.sock"
        return Settings(data_dir=tmp_path, backend=backend, docker_host=absent, local_bwrap=bwrap)

    plain = await open_backend(settings("local", False))
    assert isinstance(plain, LocalBackend) and not plain.isolated
    assert plain.capabilities.isolation is Isolation.NONE
    fallback = await open_backend(settings("auto", False))
    assert isinstance(fallback, LocalBackend) and not fallback.isolated
    if shutil.which("bwrap") is None:
        with pytest.raises(SandboxError, match="bubblewrap was requested"):
            await open_backend(settings("local", True))
    else:
        isolated = await open_backend(settings("local", True))
        assert isinstance(isolated, LocalBackend) and isolated.isolated
        assert isolated.capabilities.isolation is Isolation.PARTIAL


async def test_remove_orphans_before_the_base_dir_exists(tmp_path: Path) -> None:
    assert await LocalBackend(tmp_path / "absent").remove_orphans(Orphans()) == []


async def test_remove_orphans_leaves_a_base_dir_others_can_write_alone(tmp_path: Path) -> None:
    local = LocalBackend(tmp_path / "runs", use_bwrap=False)
    orphan = await local.launch(_spec("echo $$; sleep 300", run_id="orphan"))
    try:
        await orphan.start()
        pid = int(await orphan.stdout_lines().__anext__())
        (tmp_path / "runs").chmod(0o777)
        # Whoever can write there could have planted run directories naming processes.
        assert await LocalBackend(tmp_path / "runs").remove_orphans(Orphans()) == []
        assert _alive(pid) and orphan.run_dir.exists()
    finally:
        (tmp_path / "runs").chmod(0o700)
        await orphan.close()


@pytest.fixture
def owner() -> Iterator[str]:
    """An installation of its own; its directory under the real temp dir goes afterwards."""
    name = f"test-{secrets.token_hex(4)}"
    yield name
    path = Path(tempfile.gettempdir()) / f"jetty-sandboxes-{os.geteuid()}-{name}"
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        path.chmod(0o700)
        shutil.rmtree(path)


def test_installation_dir_is_private_and_the_same_on_every_start(owner: str) -> None:
    path = installation_dir(owner)
    assert path is not None and path == installation_dir(owner) != installation_dir(owner + "x")
    assert path.parent == Path(tempfile.gettempdir())
    assert path.stat().st_mode & 0o777 == 0o700
    assert not re.search(r"[^A-Za-z0-9/_.-]", str(path))  # written into run commands as is
    (Path(tempfile.gettempdir()) / f"jetty-sandboxes-{os.geteuid()}-{owner}x").rmdir()


@pytest.mark.parametrize("planted", ["symlink", "writable", "foreign"])
def test_installation_dir_refuses_what_is_not_privately_ours(
    owner: str, tmp_path: Path, planted: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = Path(tempfile.gettempdir()) / f"jetty-sandboxes-{os.geteuid()}-{owner}"
    if planted == "symlink":
        path.symlink_to(tmp_path)
    else:
        path.mkdir(mode=0o700)
        if planted == "writable":
            path.chmod(0o777)
        elif os.geteuid() != 0:
            unavailable("giving a directory to another user needs root", "CI runs as root")
        else:
            os.chown(path, 65534, 65534)
    assert installation_dir(owner) is None
    assert "not a private directory" in caplog.text


async def test_a_backend_on_an_installation_dir_finds_what_an_earlier_one_left(
    owner: str, tmp_path: Path
) -> None:
    base = installation_dir(owner)
    assert base is not None
    crashed = LocalBackend(base, use_bwrap=False)
    orphan = await crashed.launch(_spec("echo $$; sleep 300", run_id="orphan"))
    await orphan.start()
    pid = int(await orphan.stdout_lines().__anext__())
    local = Settings(data_dir=tmp_path, backend="local", local_bwrap=False)
    restarted = await open_backend(local, owner=owner)
    assert await restarted.remove_orphans(Orphans()) == ["orphan"]
    await _assert_dies(pid)
    await orphan.close()
    # A clean stop takes the empty directory with it; one still holding a run stays.
    await restarted.aclose()
    assert not base.exists()


async def test_aclose_keeps_a_base_dir_with_runs_in_it(tmp_path: Path) -> None:
    local = LocalBackend(tmp_path / "runs", use_bwrap=False)
    sandbox = await local.launch(_spec("true"))
    assert (tmp_path / "runs").stat().st_mode & 0o777 == 0o700
    await local.aclose()
    assert sandbox.run_dir.exists()
    await sandbox.close()
    await local.aclose()
    assert not (tmp_path / "runs").exists()


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
    homed = bwrap_command("bwrap", _spec("true"), tmp_path / "app", tmp_path / "home", HOME)
    assert homed[-9:-6] == ["--bind", str(tmp_path / "home"), HOME]
