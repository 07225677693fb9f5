"""Local backend: no container, a per-run directory stands in for /app and for HOME.

For development and machines without Docker. Each run gets ``<base_dir>/<run>/app`` (its
/app) and ``<base_dir>/<run>/home`` (its HOME). The process starts in its own process group
and is killed as a group (SIGTERM, then SIGKILL after a grace period); nothing it started
outlives it.

Path mapping. Two sandbox directories exist here: /app, and HOME — the spec env's ``HOME``
(an absolute path of its own, say /tmp/jetty-home), or, when the spec sets none, the home
directory's own host path. `put_files` and `copy_out` take the same absolute paths as with
Docker under either of them (``put_files("/", {"app/x": ..., "tmp/jetty-home/.cfg": ...})``
works); anything else, including paths inside a mount, raises `UnsafePathError`. Files are
written without following symlinks, so what an earlier process left (see `rerun`) cannot
redirect them.

Without bubblewrap the process sees the host file system, so every sandbox path of /app,
HOME or a mount's container path that appears in an argv item or env value is rewritten to
its host path: at the start of the value or after whitespace, a quote, ``=``, ``:``, ``,``,
``;`` or ``(``, and followed by ``/``, the end or one of those. That covers plain paths, PATH
lists and short shell scripts such as ``mkdir -p /app/results && cd /app``; it also rewrites
such paths in prompts given on the command line (which then name the real directory) but
never inside files. ``JETTY_APP_DIR`` names the host directory, so tool commands the agent
runs should use it or relative paths (the process starts in the mapped workdir). Mounts under
/app or HOME become symlinks (which copy_out skips). With bubblewrap (``bwrap`` on PATH)
nothing is rewritten: the run directory is bound at /app, the home directory at HOME and the
mounts at their container paths, and ``JETTY_APP_DIR`` is "/app". The spec's ``image`` is
ignored either way.

What isolates what. Without bubblewrap: nothing. The process runs as the proxy's user with
its network, on the host's loopback (a port it listens on can collide with the host's), and
can read and write anything that user can; limits (cpus, memory, pids) and ``user`` are
ignored. A warning says so once per backend. With bubblewrap: new pid, ipc and uts
namespaces, no network unless ``network_enabled`` (but a loopback of its own), no
capabilities, the host's top-level directories read-only except /root, /home, /run and /tmp
(hidden; /tmp and /run are fresh tmpfs), /app and HOME writable. Still no resource limits,
still the same user, and whatever the host keeps readable in the bound directories (/etc,
/var, /opt, ...) is readable.

The environment starts from PATH, LANG, LC_ALL and TZ of the proxy, never its whole
environment, so provider keys do not leak into runs by accident.

`LocalSandbox.rerun` keeps the run directory (both /app and HOME) and starts afresh: a new
process group, a new stdout pipe and an emptied stderr log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import anyio.to_thread

from proxy.sandbox.base import (
    LABEL_SERVER,
    Capabilities,
    CopyReport,
    ExitStatus,
    FileContent,
    Isolation,
    Orphans,
    SandboxError,
    SandboxSpec,
    SandboxStateError,
    SkipReason,
    UnsafePathError,
)
from proxy.sandbox.bwrap import bwrap_command
from proxy.sandbox.files import (
    CopyBudget,
    clean_absolute_dir,
    clean_relative_path,
    copy_tree,
    write_all,
)
from proxy.sandbox.frames import LineSplitter
from proxy.sandbox.rundirs import (
    MARK_ENV,
    installation_dir,
    kill_marked,
    make_run_dir,
    record_pid,
    remove_orphans_in,
    remove_tree,
    signal_group,
)
from proxy.sandbox.spool import local_contents

if TYPE_CHECKING:
    from proxy.settings import Settings

logger = logging.getLogger(__name__)

APP = PurePosixPath("/app")
_INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ")
_STDERR_TAIL = 8192
# How often stdout_lines looks whether the main process has exited while the pipe is quiet.
_EXIT_POLL_SECONDS = 0.5
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Where a sandbox path may start inside a value (start, whitespace, quote, = : , ; or open
# parenthesis) and what may follow it (a slash, the end, whitespace, a quote, : , ; or ")").
_PATH_BEFORE = r"(?<![^\s'\"=:,;(])"
_PATH_AFTER = r"(?=[/\s'\":,;)]|$)"


async def open_local(settings: Settings, owner: str | None) -> LocalBackend:
    """The local backend, with bubblewrap as ``settings.local_bwrap`` says. With ``owner``
    (see `proxy.runs.runtime.sandbox_owner`) runs go to the installation's own directory,
    where a restarted proxy finds what a crashed one left; without, to a fresh temp dir."""
    base_dir = installation_dir(owner) if owner is not None else None
    return LocalBackend(base_dir, use_bwrap=settings.local_bwrap)


class LocalBackend:
    """Runs sandboxes as local processes under ``base_dir`` (a fresh temp dir by default).

    Pass a stable ``base_dir`` (`proxy.sandbox.rundirs.installation_dir`) for `remove_orphans`
    to find runs of an earlier proxy process.
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

    @property
    def capabilities(self) -> Capabilities:
        # No inline files: sandbox paths in argv are rewritten to host paths (without
        # bubblewrap), which must not happen to file contents.
        isolation = Isolation.PARTIAL if self.isolated else Isolation.NONE
        return Capabilities(reruns=True, isolation=isolation, mounts_host=True)

    async def ping(self) -> bool:
        return True

    async def check_image(self, image: str) -> None:
        """Images mean nothing here: runs use the host's own filesystem."""

    async def launch(self, spec: SandboxSpec) -> LocalSandbox:
        spec.check_limits()
        home_target(spec.env)
        if not self._warned and self._bwrap is None:
            self._warned = True
            logger.warning(
                "local sandbox backend without bubblewrap: runs are NOT isolated; they act as "
                "this user on this machine, with its network and no resource limits"
            )
        safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", spec.run_id)[:64]
        run_dir = self._base() / f"{safe}-{secrets.token_hex(4)}"
        server = spec.labels.get(LABEL_SERVER)
        await anyio.to_thread.run_sync(make_run_dir, run_dir, spec.run_id, server)
        return LocalSandbox(spec, run_dir, bwrap=self._bwrap, kill_grace=self._kill_grace)

    def _base(self) -> Path:
        if self._base_dir is None:
            self._base_dir = Path(tempfile.mkdtemp(prefix="jetty-sandboxes-"))
        return self._base_dir

    async def remove_orphans(self, orphans: Orphans) -> list[str]:
        """Kill and remove the orphan runs under ``base_dir``.

        Run directories belong to this backend's base directory alone: ``orphans.owner`` adds
        nothing. A base directory that is not privately this user's is left alone.
        """
        if self._base_dir is None:
            return []
        return await anyio.to_thread.run_sync(remove_orphans_in, self._base_dir, orphans)

    async def aclose(self) -> None:
        # The base directory goes when no run is left in it (a fresh temp dir, or an
        # installation's after a clean stop); a run still there keeps it.
        if self._base_dir is not None:
            with contextlib.suppress(OSError):
                self._base_dir.rmdir()


class LocalSandbox:
    """One local run; see the module docstring for what it maps and isolates."""

    def __init__(
        self, spec: SandboxSpec, run_dir: Path, *, bwrap: str | None, kill_grace: float
    ) -> None:
        self._spec = spec
        self._mounts = spec.host_mounts()
        self.run_dir = run_dir
        self.app_dir = run_dir / "app"
        self.home_dir = run_dir / "home"
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

    @property
    def home(self) -> PurePosixPath:
        """HOME inside the sandbox: the spec env's, else the home directory's host path."""
        return home_target(self._spec.env) or PurePosixPath(self.home_dir)

    def host_path(self, sandbox_path: str) -> Path:
        """The host path for an absolute sandbox path under /app or HOME (not in a mount)."""
        host, rel = self._locate(clean_absolute_dir(sandbox_path))
        return host.joinpath(*rel.parts)

    def _locate(self, path: PurePosixPath) -> tuple[Path, PurePosixPath]:
        """The host directory of the most specific root holding ``path``, and the rest."""
        roots: list[tuple[PurePosixPath, Path | None]] = [
            (APP, self.app_dir),
            (self.home, self.home_dir),
        ]
        roots += [(clean_absolute_dir(m.container_path), None) for m in self._mounts]
        holding = [(root, host) for root, host in roots if root == path or root in path.parents]
        if not holding:
            raise UnsafePathError(
                f"the local backend only maps paths under /app and HOME ({self.home}): {path}"
            )
        root, host = max(holding, key=lambda item: len(item[0].parts))
        if host is None:
            raise UnsafePathError(f"{path} is inside the mount at {root}: not writable here")
        return host, path.relative_to(root)

    async def put_files(self, dest_dir: str, files: Mapping[str, FileContent]) -> None:
        if self._process is not None or self._closed:
            raise SandboxStateError("put_files is only possible before start")
        dest = clean_absolute_dir(dest_dir)
        if not any(dest in (root, *root.parents) for root in (APP, self.home)):
            self._locate(dest)  # neither under a root nor holding one: say why
        places: dict[str, tuple[Path, PurePosixPath]] = {}
        for name in files:
            host, rel = self._locate(dest / clean_relative_path(name))
            if not rel.parts:
                raise UnsafePathError(f"{dest / name} is a directory of the sandbox, not a file")
            places[name] = (host, rel)
        async with local_contents(files) as contents:
            placed = [(*places[name], content) for name, content in contents.items()]
            await anyio.to_thread.run_sync(_write_files, placed)

    async def start(self) -> None:
        if self._closed:
            raise SandboxStateError("the sandbox is closed")
        if self._process is not None:
            raise SandboxStateError("the sandbox was already started")
        spec = self._spec
        env = {name: os.environ[name] for name in _INHERITED_ENV if name in os.environ}
        mark = {MARK_ENV: self.run_dir.name}  # see kill_marked; the spec cannot change it
        if self._bwrap:
            home = str(self.home)
            env |= {"HOME": home, **spec.env, "JETTY_APP_DIR": str(APP), **mark}
            argv = bwrap_command(self._bwrap, spec, self.app_dir, self.home_dir, home)
            cwd = None
        else:
            await anyio.to_thread.run_sync(self._link_mounts)
            rewrite = self._rewriter()
            env["HOME"] = str(self.home_dir)
            env |= {key: rewrite(value) for key, value in spec.env.items()}
            env |= {"JETTY_APP_DIR": str(self.app_dir), **mark}
            argv = [rewrite(arg) for arg in spec.argv]
            cwd = self.host_path(spec.workdir)
            await anyio.Path(cwd).mkdir(parents=True, exist_ok=True)
        stderr_fd = os.open(
            self.run_dir / "stderr.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
        )
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
        await anyio.to_thread.run_sync(record_pid, self.run_dir, self._process.pid)

    def _link_mounts(self) -> None:
        for mount in self._mounts:
            target = clean_absolute_dir(mount.container_path)
            for root, host in ((APP, self.app_dir), (self.home, self.home_dir)):
                if root in target.parents:
                    link = host.joinpath(*target.relative_to(root).parts)
                    break
            else:
                continue  # outside /app and HOME: reached through argv/env rewriting only
            if os.path.lexists(link):
                continue  # an earlier start (rerun) made it, or the run put something there
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(mount.host_path).resolve())

    def _rewriter(self) -> Callable[[str], str]:
        """Rewrites sandbox paths in a value to host paths (see the module docstring)."""
        hosts = {str(APP): str(self.app_dir), str(self.home): str(self.home_dir)}
        for mount in self._mounts:
            hosts[str(clean_absolute_dir(mount.container_path))] = str(mount.host_path)
        prefixes = sorted(hosts, key=len, reverse=True)  # the most specific wins
        pattern = re.compile(
            _PATH_BEFORE + "(" + "|".join(map(re.escape, prefixes)) + ")" + _PATH_AFTER
        )
        return lambda value: pattern.sub(lambda match: hosts[match.group(1)], value)

    async def stdout_lines(self) -> AsyncGenerator[str, None]:
        process = self._require_process()
        if self._lines_taken:
            raise SandboxStateError("stdout_lines can be iterated only once")
        self._lines_taken = True
        assert process.stdout is not None
        lines = LineSplitter()
        try:
            while True:
                chunk = b""
                with anyio.move_on_after(_EXIT_POLL_SECONDS):
                    chunk = await process.stdout.receive()
                if chunk:
                    for line in lines.feed(chunk):
                        yield line
                elif process.returncode is not None:
                    # Like a container's: the output ends with the main process, even when
                    # something it started still holds the pipe open.
                    await self._kill_leftovers(process)
        except anyio.EndOfStream:
            pass
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
        await self._kill_leftovers(process)
        code = process.returncode if process.returncode is not None else -signal.SIGKILL
        return ExitStatus(exit_code=code if code >= 0 else 128 - code, timed_out=timed_out)

    async def kill(self) -> None:
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            signal_group(process.pid, signal.SIGTERM)
            with anyio.move_on_after(self._kill_grace):
                await process.wait()
            signal_group(process.pid, signal.SIGKILL)
            await process.wait()
        await self._kill_leftovers(process)

    async def copy_out(
        self, src_dir: str, dest: Path, max_bytes: int, max_files: int
    ) -> CopyReport:
        if self._closed:
            raise SandboxStateError("the sandbox is closed")
        host, rel = self._locate(clean_absolute_dir(src_dir))
        budget = CopyBudget(max_bytes, max_files)
        await anyio.Path(dest).mkdir(parents=True, exist_ok=True)
        if await anyio.to_thread.run_sync(_crosses_a_link, host, rel):
            budget.skip(".", SkipReason.SYMLINK)  # a directory on the way is a symlink
        else:
            await anyio.to_thread.run_sync(copy_tree, host.joinpath(*rel.parts), dest, budget)
        return budget.report

    async def rerun(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        """Ready the sandbox for another process in the same run directory (see `Sandbox`)."""
        if self._closed:
            raise SandboxStateError("the sandbox is closed")
        process = self._process
        if process is not None and process.returncode is None:
            raise SandboxStateError("the process is still running: wait for it or kill it")
        spec = dataclasses.replace(self._spec, argv=tuple(argv), env=dict(env))
        spec.check_limits()
        home_target(spec.env)
        if process is not None:
            with anyio.CancelScope(shield=True):
                await self._kill_leftovers(process)
                await process.aclose()
        self._spec = spec
        self._process = None
        self._lines_taken = False
        self._group_killed = False
        with contextlib.suppress(FileNotFoundError):
            await anyio.Path(self.run_dir / "stderr.log").write_bytes(b"")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            if self._process is not None:
                await self.kill()
                await self._kill_leftovers(self._process)
                await self._process.aclose()
            self._stderr_kept = self.stderr_tail()
            await anyio.to_thread.run_sync(remove_tree, self.run_dir)

    async def _kill_leftovers(self, process: anyio.abc.Process) -> None:
        # Like a container whose main process ended: nothing it started outlives it. Once,
        # right after the leader was reaped: the group id stays valid while members remain.
        # Processes that left the group (a new session, as agents' shell tools make) still
        # carry the run's mark in their environment.
        if not self._group_killed:
            self._group_killed = True
            signal_group(process.pid, signal.SIGKILL)
            await anyio.to_thread.run_sync(kill_marked, self.run_dir.name)

    def _require_process(self) -> anyio.abc.Process:
        if self._process is None:
            raise SandboxStateError("start the sandbox first")
        return self._process


def home_target(env: Mapping[str, str]) -> PurePosixPath | None:
    """The sandbox path of the HOME ``env`` sets (None when it sets none), validated."""
    value = env.get("HOME")
    if value is None:
        return None
    path = clean_absolute_dir(value)
    if path in (PurePosixPath("/"), APP):
        raise UnsafePathError(f"HOME must be a directory of its own, not {value!r}")
    return path


def _write_files(placed: list[tuple[Path, PurePosixPath, bytes | Path]]) -> None:
    for root, rel, content in placed:
        if isinstance(content, Path) and not stat.S_ISREG(content.stat().st_mode):
            raise ValueError(f"{content} is not a regular file")
        fd = _open_beneath(root, rel)
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


def _open_beneath(root: Path, rel: PurePosixPath) -> int | None:
    """Open ``root/rel`` for writing, parents created, never through a symlink or hard link.

    None when a component is not a directory, is a symlink, or the file has other links: an
    earlier process in the sandbox may have left any of those to redirect the write.
    """
    fd = os.open(root, _OPEN_DIR)
    try:
        for part in rel.parts[:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            try:
                child = os.open(part, _OPEN_DIR, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    return None
                raise
            os.close(fd)
            fd = child
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            file = os.open(rel.parts[-1], flags, 0o644, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                return None
            raise
        info = os.fstat(file)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(file)
            return None
        os.set_blocking(file, True)
        os.ftruncate(file, 0)
        return file
    finally:
        os.close(fd)


def _crosses_a_link(root: Path, rel: PurePosixPath) -> bool:
    """True when a directory between ``root`` and ``root/rel`` is a symlink (or no directory).

    The last component is left to `copy_tree`, which opens it without following links.
    """
    here = root
    for part in rel.parts[:-1]:
        here = here / part
        try:
            mode = here.lstat().st_mode
        except FileNotFoundError:
            return False  # a missing directory: copy_tree reports nothing
        if not stat.S_ISDIR(mode):
            return True
    return False
