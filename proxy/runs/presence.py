"""Which servers of this machine are running: a lock file each, held while the process lives.

Heartbeats (see `RunEngine.recover`) tell a server that stopped from one that runs only after
a while. On one machine the kernel knows at once: every server holds an exclusive `flock` on
``<dir>/<server id>.lock`` for its whole life, and the lock goes with the process, however it
ends. A lock file nobody holds belongs to a server that is gone. Servers that share a database
but not this directory (other machines, other data directories) are judged by heartbeat alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path

_SUFFIX = ".lock"


class Presence:
    """This server's lock file in ``directory``; `claim` it before anything else."""

    def __init__(self, directory: Path, server_id: str) -> None:
        self._directory = directory
        self._server_id = server_id
        self._fd: int | None = None

    def claim(self) -> None:
        """Hold this server's lock. Made under a temporary name and renamed once locked, so
        that no other server can see the file unlocked and take this one for gone."""
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = self._directory / f".{self._server_id}.{secrets.token_hex(4)}"
        fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(staging, self._directory / f"{self._server_id}{_SUFFIX}")
        self._fd = fd

    def release(self) -> None:
        """Stopping cleanly: the lock file goes, then the lock."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            (self._directory / f"{self._server_id}{_SUFFIX}").unlink()
        os.close(self._fd)
        self._fd = None

    def gone(self) -> set[str]:
        """The servers whose lock files here nobody holds; their files are removed."""
        gone: set[str] = set()
        if not self._directory.is_dir():
            return gone
        for path in self._directory.glob(f"*{_SUFFIX}"):
            server_id = path.name.removesuffix(_SUFFIX)
            if server_id == self._server_id or server_id.startswith("."):
                continue
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue  # removed meanwhile, or not a file of ours
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # held: that server runs
            else:
                gone.add(server_id)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            finally:
                os.close(fd)
        return gone
