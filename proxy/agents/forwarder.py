"""The sandbox's loopback forwarder, built once into the agent cache.

Codex and Gemini CLI reach their model only by URL, while the relay listens on a unix socket
mounted into the sandbox (which may have no network at all). The forwarder, a small static C
program (``forwarder/forwarder.c``; the design is in ``forwarder/README.md``), bridges the two:
it listens on 127.0.0.1 inside the sandbox and runs the agent as its child::

    binary = await ensure_forwarder(cache.root)
    Mount(binary.parent, FORWARDER_MOUNT_POINT)                      # read-only
    argv = forwarder_argv(agent_argv, port=8080, socket="/run/jetty/relay.sock")
    # the adapter's relay_base_url is then http://127.0.0.1:8080

The binary is compiled on the host with ``gcc -static`` (Debian: ``apt-get install gcc
libc6-dev``) into ``ROOT/forwarder-<hash>/``, named after a hash of the source and flags, so a
changed source gets a fresh build while running sandboxes keep theirs. Builds are atomic and
locked like agent installs (see :mod:`proxy.agents.install`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.to_thread

from proxy.agents.install import AgentInstallError, elf_interpreter
from proxy.sandbox.base import FORWARDER_DIR

SOURCE = Path(__file__).with_name("forwarder") / "forwarder.c"
FORWARDER_MOUNT_POINT = FORWARDER_DIR
FORWARDER_COMMAND = f"{FORWARDER_MOUNT_POINT}/forwarder"
BINARY_NAME = "forwarder"

# Static, so it runs in any linux/amd64 image (glibc, musl or none); small and stripped.
_CFLAGS = ("-static", "-Os", "-s", "-Wall", "-Wextra")
_BUILD_SECONDS = 120.0
_LOCK_POLL_SECONDS = 0.2
_STDERR_TAIL_LINES = 15


class ForwarderBuildError(AgentInstallError):
    """Building the forwarder failed; the message says why and what to install."""

    def __init__(self, digest: str, reason: str, detail: str = "") -> None:
        super().__init__("jetty forwarder", digest, reason, detail)


def forwarder_argv(
    argv: Sequence[str], *, port: int, socket: str, command: str = FORWARDER_COMMAND
) -> list[str]:
    """``argv`` run under the forwarder, which relays ``127.0.0.1:port`` to ``socket``.

    The forwarder exits with the agent's exit status and passes SIGTERM/SIGINT on to it.
    """
    return [command, f"127.0.0.1:{port}", socket, "--", *argv]


def source_digest() -> str:
    """The build's identity: a hash of the source and the compiler flags."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update("\0".join(_CFLAGS).encode())
    return digest.hexdigest()[:16]


async def ensure_forwarder(cache_root: Path, *, compiler: str = "gcc") -> Path:
    """The forwarder binary for the current source under ``cache_root``, built if missing.

    Mount its parent directory read-only at :data:`FORWARDER_MOUNT_POINT`. Raises
    :class:`ForwarderBuildError` (an ``AgentInstallError``) when ``compiler`` is missing or
    fails, or when what it built is not a static executable that runs.
    """
    digest = await anyio.to_thread.run_sync(source_digest)
    binary = cache_root / f"forwarder-{digest}" / BINARY_NAME
    if await anyio.to_thread.run_sync(_usable, binary):
        return binary
    async with _file_lock(cache_root):
        # Another task or process may have built it while we waited.
        if await anyio.to_thread.run_sync(_usable, binary):
            return binary
        await _build(cache_root, digest, compiler, binary)
    return binary


def _usable(binary: Path) -> bool:
    return binary.is_file() and os.access(binary, os.X_OK)


async def _build(root: Path, digest: str, compiler: str, binary: Path) -> None:
    await anyio.to_thread.run_sync(_remove_leftovers, root)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-forwarder-{digest}-", dir=root))
    try:
        built = staging / BINARY_NAME
        await _compile(digest, compiler, built)
        await _verify(digest, built)
        await anyio.to_thread.run_sync(_move_into_place, staging, binary.parent)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_remove_tree, staging)


async def _compile(digest: str, compiler: str, output: Path) -> None:
    command = [compiler, *_CFLAGS, "-o", str(output), str(SOURCE)]
    try:
        with anyio.fail_after(_BUILD_SECONDS):
            result = await anyio.run_process(command, check=False)
    except FileNotFoundError as exc:
        raise ForwarderBuildError(
            digest,
            f"{compiler!r} was not found; install a C compiler and static libc to build the"
            " sandbox forwarder (Debian: apt-get install gcc libc6-dev)",
        ) from exc
    except TimeoutError as exc:
        raise ForwarderBuildError(digest, f"{compiler} did not finish in time") from exc
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace")
        reason = f"{compiler} exited with code {result.returncode}"
        if "cannot find -lc" in stderr:
            reason += "; the static C library is missing (Debian: apt-get install libc6-dev)"
        raise ForwarderBuildError(digest, reason, _tail(stderr))


async def _verify(digest: str, binary: Path) -> None:
    loader = await anyio.to_thread.run_sync(elf_interpreter, binary)
    if loader is not None:
        raise ForwarderBuildError(digest, f"the build is not static (it asks for {loader})")
    try:
        with anyio.fail_after(10):
            result = await anyio.run_process([str(binary), "--version"], check=False)
    except (OSError, TimeoutError) as exc:
        raise ForwarderBuildError(digest, f"the built forwarder did not run: {exc}") from exc
    if result.returncode != 0 or not result.stdout.startswith(b"forwarder "):
        output = (result.stdout + result.stderr).decode(errors="replace")
        raise ForwarderBuildError(digest, "the built forwarder failed --version", _tail(output))


def _move_into_place(staging: Path, final: Path) -> None:
    # mkdtemp makes the directory private; sandboxes may run as any user.
    staging.chmod(0o755)
    if final.exists():  # a broken earlier build: the binary in it is not usable
        _remove_tree(final)
    staging.rename(final)


@asynccontextmanager
async def _file_lock(root: Path) -> AsyncIterator[None]:
    await anyio.to_thread.run_sync(lambda: root.mkdir(parents=True, exist_ok=True))
    fd = os.open(root / ".forwarder.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        # Polling, not a blocking flock in a thread: a cancelled wait must not leave a thread
        # behind that takes the lock later. Each call opens its own descriptor, so tasks of
        # one process exclude each other too.
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    raise
            await anyio.sleep(_LOCK_POLL_SECONDS)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_leftovers(root: Path) -> None:
    """Staging directories of builds that crashed before cleaning up."""
    for path in root.glob(".staging-forwarder-*"):
        _remove_tree(path)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _tail(text: str, lines: int = _STDERR_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
