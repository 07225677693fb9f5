"""Local backend: no container, a per-run directory stands in for /app.

For development and machines without Docker. Each run gets ``<base_dir>/<run>/app`` (its
/app) and ``<base_dir>/<run>/home`` (its HOME unless the spec sets one). The process starts in
its own process group and is killed as a group (SIGTERM, then SIGKILL after a grace period).

Path mapping. Only paths under /app exist here: `put_files`, `copy_out` and ``workdir`` take
the same /app/... paths as with Docker and are rewritten onto the run directory. Without
bubblewrap the process sees the host file system, so argv items and env values that are
/app or start with /app/ (or a mount's container path) are rewritten to the host path too,
and ``JETTY_APP_DIR`` names the host directory; mounts under /app become symlinks (which
copy_out skips). Paths inside a longer string (a shell script, a prompt) are not rewritten:
such scripts should use $JETTY_APP_DIR or relative paths (the process starts in the mapped
workdir). With bubblewrap (``bwrap`` on PATH) nothing is rewritten: the run directory is
bound at /app and mounts at their container paths, and ``JETTY_APP_DIR`` is "/app". The
spec's ``image`` is ignored either way.

What isolates what. Without bubblewrap: nothing. The process runs as the proxy's user with
its network and can read and write anything that user can; limits (cpus, memory, pids) and
``user`` are ignored. A warning says so once per backend. With bubblewrap: new pid, ipc and
uts namespaces, no network unless ``network_enabled``, no capabilities, the host's top-level
directories read-only except /root, /home, /run and /tmp (hidden), /app and HOME writable.
Still no resource limits, still the same user, and whatever the host keeps readable in the
bound directories (/etc, /var, /opt, ...) is readable.

The environment starts from PATH, LANG, LC_ALL and TZ of the proxy, never its whole
environment, so provider keys do not leak into runs by accident.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path, PurePosixPath

import anyio
import anyio.abc
import anyio.to_thread

from proxy.sandbox.base import (
    CopyReport,
    ExitStatus,
    SandboxError,
    SandboxSpec,
    SandboxStateError,
    UnsafePathError,
)
from proxy.sandbox.bwrap import bwrap_command
from proxy.sandbox.files import (
    CopyBudget,
    clean_absolute_dir,
    clean_relative_path,
    copy_tree,
    open_dest_file,
    write_all,
)
from proxy.sandbox.frames import LineSplitter

logger = logging.getLogger(__name__)

APP = PurePosixPath("/app")
_INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ")
_META = "sandbox.json"
_STDERR_TAIL = 8192


class LocalBackend:
    """Runs sandboxes as local processes under ``base_dir`` (a fresh temp dir by default).

    Pass a stable ``base_dir`` for `remove_orphans` to find runs of an earlier proxy process.
    ``use_bwrap``: None uses bubblewrap when it is on PATH, True requires it, False never.
    """

    name = "local"

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        use_bwrap: bool | None = None,
        kill_grace: float = 2.0,
    ) -> None:
        self._bwrap = shutil.which("bwrap") if use_bwrap is not False else None
        if use_bwrap and self._bwrap is None:
            raise SandboxError("bubblewrap was requested but `bwrap` is not on PATH")
        self._base_dir = base_dir
        self._kill_grace = kill_grace
        self._warned = False

    @property
    def isolated(self) -> bool:
        """True when runs go through bubblewrap."""
        return self._bwrap is not None

    async def ping(self) -> bool:
        return True

    async def check_image(self, image: str) -> None:
        """Images mean nothing here: runs use the host's own filesystem."""

    async def launch(self, spec: SandboxSpec) -> LocalSandbox:
        spec.check_limits()
        if not self._warned and self._bwrap is None:
            self._warned = True
            logger.warning(
                "local sandbox backend without bubblewrap: runs are NOT isolated; they act as "
                "this user on this machine, with its network and no resource limits"
            )
        safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", spec.run_id)[:64]
        run_dir = self._base() / f"{safe}-{secrets.token_hex(4)}"
        await anyio.to_thread.run_sync(_make_run_dir, run_dir, spec.run_id)
        return LocalSandbox(spec, run_dir, bwrap=self._bwrap, kill_grace=self._kill_grace)

    def _base(self) -> Path:
        if self._base_dir is None:
            self._base_dir = Path(tempfile.mkdtemp(prefix="jetty-sandboxes-"))
        return self._base_dir

    async def remove_orphans(self, keep_run_ids: set[str], owner: str | None = None) -> list[str]:
        # Run directories belong to this backend's base directory alone; owner adds nothing.
        if self._base_dir is None:
            return []
        return await anyio.to_thread.run_sync(_remove_orphans, self._base_dir, keep_run_ids)

    async def aclose(self) -> None:
        return None


class LocalSandbox:
    """One local run; see the module docstring for what it maps and isolates."""

    def __init__(
        self, spec: SandboxSpec, run_dir: Path, *, bwrap: str | None, kill_grace: float
    ) -> None:
        self._spec = spec
        self.run_dir = run_dir
        self.app_dir = run_dir / "app"
        self._bwrap = bwrap
        self._kill_grace = kill_grace
        self._process: anyio.abc.Process | None = None
        self._lines_taken = False
        self._closed = False
        self._group_killed = False
        self._stderr_kept: str | None = None  # the tail, saved before the run dir goes

    @property
    def run_id(self) -> str:
        return self._spec.run_id

    def host_path(self, sandbox_path: str) -> Path:
        """The host path for an absolute sandbox path under /app."""
        path = clean_absolute_dir(sandbox_path)
        if path != APP and APP not in path.parents:
            raise UnsafePathError(f"the local backend only maps paths under /app: {path}")
        return self.app_dir.joinpath(*path.relative_to(APP).parts)

    async def put_files(self, dest_dir: str, files: Mapping[str, bytes | Path]) -> None:
        if self._process is not None or self._closed:
            raise SandboxStateError("put_files is only possible before start")
        target = self.host_path(dest_dir)
        named = {clean_relative_path(name): content for name, content in files.items()}
        await anyio.to_thread.run_sync(_write_files, target, named)

    async def start(self) -> None:
        if self._closed:
            raise SandboxStateError("the sandbox is closed")
        if self._process is not None:
            raise SandboxStateError("the sandbox was already started")
        home = self.run_dir / "home"
        env = {name: os.environ[name] for name in _INHERITED_ENV if name in os.environ}
        env["HOME"] = str(home)
        if self._bwrap:
            env |= {**self._spec.env, "JETTY_APP_DIR": str(APP)}
            argv = bwrap_command(self._bwrap, self._spec, self.app_dir, home)
            cwd = None
        else:
            await anyio.to_thread.run_sync(self._link_mounts)
            env |= {key: self._rewrite(value) for key, value in self._spec.env.items()}
            env["JETTY_APP_DIR"] = str(self.app_dir)
            argv = [self._rewrite(arg) for arg in self._spec.argv]
            cwd = self.host_path(self._spec.workdir)
            await anyio.Path(cwd).mkdir(parents=True, exist_ok=True)
        stderr_fd = os.open(self.run_dir / "stderr.log", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            self._process = await anyio.open_process(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr_fd,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise SandboxError(f"could not start {argv[0]!r}: {exc}") from exc
        finally:
            os.close(stderr_fd)
        await anyio.to_thread.run_sync(_record_pid, self.run_dir, self._process.pid)

    def _link_mounts(self) -> None:
        for mount in self._spec.mounts:
            try:
                link = self.host_path(mount.container_path)
            except UnsafePathError:
                continue  # outside /app: reached through argv/env rewriting only
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(mount.host_path).resolve())

    def _rewrite(self, value: str) -> str:
        prefixes: list[tuple[str, str]] = [(str(APP), str(self.app_dir))]
        prefixes += [(m.container_path.rstrip("/"), str(m.host_path)) for m in self._spec.mounts]
        for prefix, host in prefixes:
            if value == prefix or value.startswith(prefix + "/"):
                return host + value[len(prefix) :]
        return value

    async def stdout_lines(self) -> AsyncGenerator[str, None]:
        process = self._require_process()
        if self._lines_taken:
            raise SandboxStateError("stdout_lines can be iterated only once")
        self._lines_taken = True
        assert process.stdout is not None
        lines = LineSplitter()
        try:
            async for chunk in process.stdout:
                for line in lines.feed(chunk):
                    yield line
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            if not self._closed:
                raise
            return
        for line in lines.flush():
            yield line

    def stderr_tail(self) -> str:
        if self._stderr_kept is not None:
            return self._stderr_kept
        try:
            with (self.run_dir / "stderr.log").open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - _STDERR_TAIL))
                return log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    async def wait(self, timeout: float | None = None) -> ExitStatus:  # noqa: ASYNC109
        process = self._require_process()
        with anyio.move_on_after(timeout) as scope:
            await process.wait()
        timed_out = scope.cancelled_caught
        if timed_out:
            await self.kill()
        self._kill_leftovers(process)
        code = process.returncode if process.returncode is not None else -signal.SIGKILL
        return ExitStatus(exit_code=code if code >= 0 else 128 - code, timed_out=timed_out)

    async def kill(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        with anyio.move_on_after(self._kill_grace):
            await process.wait()
        _signal_group(process.pid, signal.SIGKILL)
        await process.wait()

    async def copy_out(
        self, src_dir: str, dest: Path, max_bytes: int, max_files: int
    ) -> CopyReport:
        if self._closed:
            raise SandboxStateError("the sandbox is closed")
        src = self.host_path(src_dir)
        budget = CopyBudget(max_bytes, max_files)
        await anyio.Path(dest).mkdir(parents=True, exist_ok=True)
        await anyio.to_thread.run_sync(copy_tree, src, dest, budget)
        return budget.report

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            if self._process is not None:
                await self.kill()
                self._kill_leftovers(self._process)
                await self._process.aclose()
            self._stderr_kept = self.stderr_tail()
            await anyio.to_thread.run_sync(_remove_tree, self.run_dir)

    def _kill_leftovers(self, process: anyio.abc.Process) -> None:
        # Like a container whose main process ended: nothing it started outlives it. Once,
        # right after the leader was reaped: the group id stays valid while members remain.
        if not self._group_killed:
            self._group_killed = True
            _signal_group(process.pid, signal.SIGKILL)

    def _require_process(self) -> anyio.abc.Process:
        if self._process is None:
            raise SandboxStateError("start the sandbox first")
        return self._process


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _make_run_dir(run_dir: Path, run_id: str) -> None:
    run_dir.mkdir(mode=0o700, parents=True)
    (run_dir / "app").mkdir()
    (run_dir / "home").mkdir()
    (run_dir / _META).write_text(json.dumps({"run_id": run_id}))


def _record_pid(run_dir: Path, pid: int) -> None:
    meta = json.loads((run_dir / _META).read_text())
    meta |= {"pid": pid, "started": _start_ticks(pid)}
    (run_dir / _META).write_text(json.dumps(meta))


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks, to tell it apart from a later reuse of pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _write_files(target: Path, files: Mapping[PurePosixPath, bytes | Path]) -> None:
    for rel, content in files.items():
        if isinstance(content, Path) and not stat.S_ISREG(content.stat().st_mode):
            raise ValueError(f"{content} is not a regular file")
        fd = open_dest_file(target, rel)
        if fd is None:
            raise SandboxError(f"cannot write {rel}: the name collides with another entry")
        try:
            if isinstance(content, bytes):
                write_all(fd, content)
                continue
            with content.open("rb") as source:
                while chunk := source.read(256 * 1024):
                    write_all(fd, chunk)
                if os.fstat(source.fileno()).st_mode & 0o100:
                    os.fchmod(fd, 0o755)
        finally:
            os.close(fd)


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    # A run may leave read-only directories behind (its processes are dead by now, so
    # nothing can swap a directory for a symlink while this walks).
    for top, _dirs, _files in os.walk(path):
        os.chmod(top, 0o700)
    shutil.rmtree(path)


def _remove_orphans(base_dir: Path, keep: set[str]) -> list[str]:
    removed: list[str] = []
    for run_dir in sorted(base_dir.iterdir()):
        try:
            meta = json.loads((run_dir / _META).read_text())
        except (OSError, ValueError):
            continue  # not one of ours
        run_id = str(meta.get("run_id", ""))
        if run_id in keep:
            continue
        pid = meta.get("pid")
        if isinstance(pid, int) and meta.get("started") and _start_ticks(pid) == meta["started"]:
            _signal_group(pid, signal.SIGKILL)
        _remove_tree(run_dir)
        removed.append(run_id)
    return removed
