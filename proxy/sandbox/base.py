"""The sandbox seam: one small protocol that every backend implements.

A backend (`SandboxBackend`) says what it can do (`Capabilities`: the rest of the proxy asks
those, never a backend's name) and launches a `Sandbox` from a `SandboxSpec`. A sandbox is created
stopped, so files can be put into it first; then it is started, its stdout is read as lines,
its exit is awaited, files are copied out (also after the process has exited) and finally it
is closed. Retries, timeouts policy and bookkeeping belong to the caller (the run lifecycle),
not to the backends.

What a sandbox needs from this machine is said, not done, in its spec: the agent CLI
(`AgentTools`, by name and version) and the model relay (`SandboxRelay`: its unix socket here,
its network URL, the run's token). A backend that mounts host paths (`Capabilities`
``mounts_host``) bind-mounts them (`SandboxSpec.host_mounts`); another brings the agent itself
(from an image) and lets its sandboxes reach the relay over the network.

Lifecycle, as the caller writes it::

    sandbox = await backend.launch(spec)
    try:
        await sandbox.put_files("/app", {"runbook.md": text})
        await sandbox.start()
        async for line in sandbox.stdout_lines():
            ...
        status = await sandbox.wait(timeout=600)
        report = await sandbox.copy_out("/app/results", dest, max_bytes=..., max_files=...)
    finally:
        with anyio.CancelScope(shield=True):
            await sandbox.close()

Errors (every backend maps its foreign errors, e.g. httpx or engine JSON, into these and
chains the original with ``from``)::

    SandboxError                  base class; message is meant for operators
     ├── EngineUnavailable        the engine (socket, daemon) cannot be reached or failed
     ├── ImageNotFound            the image is not present (or a node could not pull it)
     ├── SandboxLimitError        a resource limit is invalid or was refused by the engine
     ├── SandboxStateError        the call does not fit the sandbox's state (start twice, ...)
     └── UnsafePathError          a file name escapes its directory (also a ValueError)
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeAlias, runtime_checkable

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

LABEL_RUN_ID = "jetty-proxy.run-id"
LABEL_COLLECTION = "jetty-proxy.collection"
LABEL_MANAGED = "jetty-proxy.managed"
LABEL_OWNER = "jetty-proxy.owner"
# The serving process that launched the sandbox (see `Orphans`).
LABEL_SERVER = "jetty-proxy.server"
# The warm pool a sandbox was started for, ahead of its run (see `proxy.sandbox.warm`).
LABEL_POOL = "jetty-proxy.pool"

# Inside every sandbox, whatever the backend: the tools, read-only (the agent CLIs under
# agents/<name>, the loopback forwarder under tools/), and where a backend that mounts host
# paths puts the model relay's socket directory.
TOOLS_DIR = "/opt/jetty"
AGENTS_DIR = f"{TOOLS_DIR}/agents"
FORWARDER_DIR = f"{TOOLS_DIR}/tools"
RELAY_DIR = "/run/jetty"


class StreamedFile(Protocol):
    """File content that is not on this machine (an object-store blob): read as it is put."""

    async def open(self) -> AsyncIterator[bytes]:
        """The content in chunks."""
        ...


#: What `Sandbox.put_files` writes: the bytes themselves, a regular file on the host (read
#: as it is copied), or content streamed from elsewhere.
FileContent: TypeAlias = bytes | Path | StreamedFile


class SandboxError(Exception):
    """Base class of every error a sandbox backend raises."""


class EngineUnavailable(SandboxError):
    """The sandbox engine cannot be reached, or it failed in a way the caller cannot fix."""


class ImageNotFound(SandboxError):
    """The image is not available locally (Docker and local backends never pull), or the
    engine's nodes could not pull it (``reason``: what they said)."""

    def __init__(self, image: str, reason: str | None = None) -> None:
        if reason is None:
            message = f"image {image!r} is not available on the sandbox engine (not pulled)"
        else:
            message = f"image {image!r} could not be pulled: {reason}"
        super().__init__(message)
        self.image = image


class SandboxLimitError(SandboxError):
    """A resource limit in the spec is invalid, or the engine refused to apply it."""


class SandboxStateError(SandboxError):
    """The operation does not fit the sandbox's state (e.g. put_files after start)."""


class UnsafePathError(SandboxError, ValueError):
    """A file name is absolute, contains '..', NUL or a backslash, or is empty."""


class Isolation(enum.StrEnum):
    """How far a backend's sandboxes are kept from the machine the proxy runs on."""

    #: A process of the proxy's user, with its files, network and no resource limits.
    NONE = "none"
    #: Namespaces of its own and no network, but the host's files readable and no limits.
    PARTIAL = "partial"
    #: A file system, network and resource limits of its own (a container).
    FULL = "full"


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do. The run path asks these questions, never the backend's name.

    ``runs_images``: a sandbox starts from the OCI image its spec names (else the image is
    ignored and runs see this machine's files). ``builds_images``: those images live on an
    engine this proxy can pull and build on, so snapshots are built there and a run's image is
    pulled or built before its sandbox starts, with progress in the stream (see
    `proxy.environments`). ``inline_files``: the start command reaches the sandbox as given, so
    small files can be written by it instead of being copied in first. ``reruns``:
    `Sandbox.rerun` works, so a finished run's sandbox can wait for the conversation's next
    turn. ``warm_pool``: the backend is also a `~proxy.sandbox.warm.WarmLauncher`:
    sandboxes can be started before their runs ask for them, and a run claims one instead
    of launching its own.
    ``isolation``: see `Isolation`. ``mounts_host``: sandboxes see directories of this
    machine, so the agent CLI comes from this machine's cache and the model relay through its
    unix socket (`SandboxSpec.host_mounts`); else the backend brings the agent itself, by name
    and version, and its sandboxes reach the relay over the network (`SandboxRelay.url`). A
    capability added later defaults to what a backend that does not know it can do (nothing),
    so existing backends need no edit.
    """

    runs_images: bool = False
    builds_images: bool = False
    inline_files: bool = False
    reruns: bool = False
    warm_pool: bool = False
    isolation: Isolation = Isolation.NONE
    mounts_host: bool = False

    def __post_init__(self) -> None:
        if self.builds_images and not self.runs_images:
            raise ValueError("a backend that builds images must run them")


@dataclass(frozen=True)
class Mount:
    """A host path made visible inside the sandbox (read-only unless said otherwise)."""

    host_path: Path | str
    container_path: str
    read_only: bool = True


@dataclass(frozen=True)
class AgentTools:
    """The agent CLI a sandbox runs, read-only at ``path`` inside it (`AGENTS_DIR`/name).

    ``name`` and ``version`` say which. ``host_dir`` is this machine's install of it, which a
    backend that mounts host paths mounts at ``path``; None when it is not installed here (a
    backend that brings the agent itself needs none).
    """

    name: str
    version: str
    path: str
    host_dir: Path | None = None


@dataclass(frozen=True)
class SandboxRelay:
    """This server's model relay as a sandbox reaches it, and the run's token, the only
    credential a sandbox holds (valid while its run is live).

    A backend that mounts host paths mounts ``socket``'s directory at `RELAY_DIR`, and
    ``forwarder`` (the loopback forwarder's directory, for an agent that only takes a URL) at
    `FORWARDER_DIR`. Any other lets its sandboxes reach ``url`` over its network, and may take
    what they send this server beyond model calls (their files) with ``token``.
    """

    token: str = field(repr=False)
    socket: Path | None = None
    url: str | None = None
    forwarder: Path | None = None


@dataclass(frozen=True)
class Orphans:
    """Which sandboxes `SandboxBackend.remove_orphans` removes.

    Only those a backend labelled, and with ``owner`` only those whose spec carried that
    `LABEL_OWNER` (installations sharing an engine leave each other's alone). Of those, a
    sandbox is kept when its run is in ``keep_run_ids`` or its `LABEL_SERVER` names one of
    ``live_servers`` (a serving process that is alive owns it).
    """

    keep_run_ids: Collection[str] = ()
    owner: str | None = None
    live_servers: Collection[str] = ()

    def kept(self, run_id: str, server: object) -> bool:
        return run_id in self.keep_run_ids or server in self.live_servers


@dataclass(frozen=True)
class SandboxSpec:
    """Everything a backend needs to launch one sandbox.

    ``labels`` are extra engine labels; the backend's own ``jetty-proxy.*`` labels always win.
    ``cpus`` / ``memory_bytes`` of ``None`` mean "no limit"; ``user`` of ``None`` means the
    image's default user. ``agent`` and ``relay`` say what the sandbox needs from this server
    (see the module's docstring); ``mounts`` are further host paths, for backends that mount
    them. ``timeout_seconds`` is the run's time limit: the caller enforces it (`Sandbox.wait`),
    and a backend whose engine has a deadline of its own may back it up with one.
    """

    run_id: str
    collection: str
    image: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str = "/app"
    mounts: Sequence[Mount] = ()
    cpus: float | None = None
    memory_bytes: int | None = None
    pids_limit: int = 512
    network_enabled: bool = False
    user: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    agent: AgentTools | None = None
    relay: SandboxRelay | None = None
    timeout_seconds: float | None = None

    def host_mounts(self) -> list[Mount]:
        """How a backend that mounts host paths gives the sandbox what it needs: ``mounts``,
        the agent's install, the relay's socket directory and the forwarder, read-only.
        `SandboxLimitError` when the agent is not installed on this machine."""
        relay = self.relay
        return [
            *self.mounts,
            *tool_mounts(
                self.agent,
                relay.socket if relay is not None else None,
                relay.forwarder if relay is not None else None,
            ),
        ]

    def check_limits(self) -> None:
        """Raise `SandboxLimitError` for limits no backend could apply."""
        if not self.argv:
            raise SandboxLimitError("argv must name a program to run")
        if self.cpus is not None and not self.cpus > 0:
            raise SandboxLimitError(f"cpus must be positive, got {self.cpus}")
        if self.memory_bytes is not None and self.memory_bytes <= 0:
            raise SandboxLimitError(f"memory_bytes must be positive, got {self.memory_bytes}")
        if self.pids_limit <= 0:
            raise SandboxLimitError(f"pids_limit must be positive, got {self.pids_limit}")

    def all_labels(self) -> dict[str, str]:
        """The extra labels plus the backend-owned ones, which cannot be overridden."""
        return {
            **self.labels,
            LABEL_RUN_ID: self.run_id,
            LABEL_COLLECTION: self.collection,
            LABEL_MANAGED: "true",
        }


def tool_mounts(
    agent: AgentTools | None, relay_socket: Path | None, forwarder: Path | None
) -> list[Mount]:
    """The host mounts that give a sandbox its tools: the agent's install, the relay's
    socket directory and the loopback forwarder, read-only. `SandboxLimitError` when the
    agent is not installed on this machine."""
    mounts: list[Mount] = []
    if agent is not None:
        if agent.host_dir is None:
            raise SandboxLimitError(
                f"{agent.name} {agent.version} is not installed on this machine"
            )
        mounts.append(Mount(agent.host_dir, agent.path))
    if relay_socket is not None:
        mounts.append(Mount(relay_socket.parent, RELAY_DIR))
    if forwarder is not None:
        mounts.append(Mount(forwarder, FORWARDER_DIR))
    return mounts


@dataclass(frozen=True)
class ExitStatus:
    """How the sandboxed process ended.

    ``exit_code`` follows the shell convention: 128 + N when killed by signal N (137 after a
    kill). ``timed_out`` is set when `Sandbox.wait` had to kill the process.
    """

    exit_code: int
    oom_killed: bool = False
    timed_out: bool = False


class SkipReason(enum.StrEnum):
    """Why `Sandbox.copy_out` did not copy an entry."""

    SYMLINK = "symlink"
    LINK = "hardlink"
    SPECIAL = "special file"
    UNSAFE_PATH = "unsafe path"
    TOO_LARGE = "byte cap reached"
    TOO_MANY_FILES = "file cap reached"
    ARCHIVE_TOO_LARGE = "archive read limit reached"
    CONFLICT = "name conflict"


@dataclass(frozen=True)
class CopiedFile:
    """A file written under the copy_out destination; ``path`` is relative, '/'-separated."""

    path: str
    size: int


@dataclass(frozen=True)
class SkippedFile:
    """An entry that was not copied, with the reason."""

    path: str
    reason: SkipReason


@dataclass
class CopyReport:
    """What `Sandbox.copy_out` did. ``skipped_unrecorded`` counts skips past the record cap."""

    files: list[CopiedFile] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    skipped_unrecorded: int = 0

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@runtime_checkable
class Sandbox(Protocol):
    """One launched sandbox. Created stopped; `close` is idempotent and always safe."""

    @property
    def run_id(self) -> str: ...

    async def put_files(self, dest_dir: str, files: Mapping[str, FileContent]) -> None:
        """Write files under the absolute ``dest_dir`` before `start`.

        Keys are relative names ('a/b.txt'); parent directories are created. Names that are
        absolute, contain '..', NUL or backslashes raise `UnsafePathError`.
        """
        ...

    async def start(self) -> None:
        """Start the process."""
        ...

    def stdout_lines(self) -> AsyncGenerator[str, None]:
        """Yield the process's stdout as lines (without the newline) as they arrive.

        Iterate once. The generator ends when the process's stdout closes; a caller that stops
        early should close it (``contextlib.aclosing``). stderr is kept apart and can be read
        with `stderr_tail`.
        """
        ...

    def stderr_tail(self) -> str:
        """The last few KiB of stderr seen so far.

        Complete once `stdout_lines` has ended, or, if it was never iterated, once `wait`
        returned. Still available after `close`.
        """
        ...

    async def wait(self, timeout: float | None = None) -> ExitStatus:  # noqa: ASYNC109
        """Wait for the process to exit; after ``timeout`` seconds kill it and report so.

        The timeout is part of the contract (it kills the sandbox rather than cancelling the
        caller), which is why it is a parameter and not a cancel scope around the call.
        """
        ...

    async def kill(self) -> None:
        """Kill the process now. A no-op when it is not running."""
        ...

    async def copy_out(
        self, src_dir: str, dest: Path, max_bytes: int, max_files: int
    ) -> CopyReport:
        """Copy the regular files under ``src_dir`` into ``dest`` (created if missing).

        Works after the process exited. Never follows symlinks: symlinks, hard links, device
        files and other special files, paths escaping ``src_dir`` and files past the caps are
        skipped and recorded. ``max_bytes`` caps the total bytes copied and ``max_files`` the
        number of files; a file that does not fit is skipped whole, never truncated. A missing
        ``src_dir`` gives an empty report.
        """
        ...

    async def rerun(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        """Make a sandbox whose process has exited ready to run ``argv`` with ``env``.

        Only for backends whose `Capabilities` say ``reruns`` (others raise
        `SandboxStateError`).

        The filesystem is kept as the last process left it (that is the point: a follow-up
        turn of a conversation continues in the same sandbox). Afterwards the sandbox is in the
        created state again: `put_files`, `start`, `stdout_lines` (only the new process's
        output), `wait` and `kill` behave as after `SandboxBackend.launch`. ``env`` replaces
        the spec's environment as a whole; the spec's mounts, limits, user and workdir stay.
        Raises `SandboxStateError` while the process is still running or after `close`.
        """
        ...

    async def close(self) -> None:
        """Remove the sandbox and everything it runs. Safe to call twice and after failures."""
        ...


@runtime_checkable
class SandboxBackend(Protocol):
    """Launches sandboxes on one engine."""

    @property
    def name(self) -> str:
        """For people: logs, progress lines, a run's record. Never a reason to branch."""
        ...

    @property
    def capabilities(self) -> Capabilities:
        """What this backend can do."""
        ...

    async def ping(self) -> bool:
        """True when the engine answers. Never raises."""
        ...

    async def check_image(self, image: str) -> None:
        """Raise `ImageNotFound` unless ``image`` can be launched now (backends never pull)."""
        ...

    async def launch(self, spec: SandboxSpec) -> Sandbox:
        """Create (but do not start) a sandbox for ``spec``."""
        ...

    async def remove_orphans(self, orphans: Orphans) -> list[str]:
        """Remove the sandboxes ``orphans`` describes; return their run ids."""
        ...

    async def aclose(self) -> None:
        """Release the backend's own resources (connections). Sandboxes are not touched."""
        ...


@runtime_checkable
class ServesSandboxes(Protocol):
    """A backend whose sandboxes call this server for more than their model calls (to move
    their files, say): the model relay's network listener serves its `sandbox_routes` too.
    Backends without such calls need not have it."""

    def sandbox_routes(self) -> Sequence[BaseRoute]:
        """Routes for the relay's network listener; each authenticates its caller itself."""
        ...
