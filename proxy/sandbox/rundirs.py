"""Local run directories across restarts: where they live, what they record, and how a
restarted proxy finds the runs a crashed one left, kills their processes and removes them.

Each run directory holds ``sandbox.json`` (its run id, the server that launched it, and its
main process's pid with that process's start time, so a reused pid is never killed). Every
process of a run carries ``MARK_ENV=<its run directory's name>``, to find strays by.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import stat
import tempfile
import time
from pathlib import Path

from proxy.sandbox.base import Orphans

logger = logging.getLogger(__name__)

_META = "sandbox.json"
MARK_ENV = "JETTY_SANDBOX_ID"
_MARK_KILL_ROUNDS = 50


def installation_dir(owner: str) -> Path | None:
    """The run directories' base for one installation: ``<temp dir>/jetty-sandboxes-<uid>-<owner>``.

    The same on every start of a proxy on one database (``owner``), so that a restarted
    proxy finds the runs a crashed one left (`LocalBackend.remove_orphans`). In the temp dir
    rather than the data directory because run paths are written into a run's commands (see
    the path mapping in `proxy.sandbox.local`): a temp path is short and free of spaces.
    Made 0700; None, with a warning, when the path exists but is not a directory of this
    user's that no one else can write (the temp dir is shared).
    """
    path = Path(tempfile.gettempdir()) / f"jetty-sandboxes-{os.geteuid()}-{owner}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    if _own_dir(path):
        return path
    logger.warning(
        "%s is not a private directory of this user's: local runs go to a fresh temp dir, and"
        " runs a crashed proxy left there will not be found",
        path,
    )
    return None


def _own_dir(path: Path) -> bool:
    """True if ``path`` is a directory (not a symlink) of this user's, writable by no one else."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def kill_marked(mark: str) -> None:
    """SIGKILL every process whose environment carries ``MARK_ENV=mark`` (blocking).

    Rounds until none is left, so one forked between a scan and its kill is caught too. A
    process that cleared its environment escapes this (the docstring says: no isolation).
    """
    needle = f"{MARK_ENV}={mark}".encode()
    for _ in range(_MARK_KILL_ROUNDS):
        found = False
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as environ:
                    marked = needle in environ.read().split(b"\0")
            except OSError:
                continue  # gone, or not ours to read
            if marked:
                found = True
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(entry.name), signal.SIGKILL)
        if not found:
            return
        time.sleep(0.01)


def make_run_dir(run_dir: Path, run_id: str, server: str | None) -> None:
    # The base too is private when made here (another server may just have removed it).
    run_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    run_dir.mkdir(mode=0o700)
    (run_dir / "app").mkdir()
    (run_dir / "home").mkdir()
    (run_dir / _META).write_text(json.dumps({"run_id": run_id, "server": server}))


def record_pid(run_dir: Path, pid: int) -> None:
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


def remove_tree(path: Path) -> None:
    if not path.exists():
        return
    # A run may leave read-only directories behind (its processes are dead by now, so
    # nothing can swap a directory for a symlink while this walks).
    for top, _dirs, _files in os.walk(path):
        os.chmod(top, 0o700)
    shutil.rmtree(path)


def remove_orphans_in(base_dir: Path, orphans: Orphans) -> list[str]:
    removed: list[str] = []
    if not base_dir.exists():
        return removed  # a first start: nothing was ever run here
    if not _own_dir(base_dir):
        # Someone else could have put run directories here, naming processes to kill.
        logger.warning("not looking for orphan runs in %s: not a private directory", base_dir)
        return removed
    for run_dir in sorted(base_dir.iterdir()):
        try:
            meta = json.loads((run_dir / _META).read_text())
        except (OSError, ValueError):
            continue  # not one of ours
        run_id = str(meta.get("run_id", ""))
        if orphans.kept(run_id, meta.get("server")):
            continue
        pid = meta.get("pid")
        if isinstance(pid, int) and meta.get("started") and _start_ticks(pid) == meta["started"]:
            signal_group(pid, signal.SIGKILL)
        kill_marked(run_dir.name)
        remove_tree(run_dir)
        removed.append(run_id)
    return removed
