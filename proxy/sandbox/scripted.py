"""A scripted, in-memory sandbox backend: for testing code that runs sandboxes, without one.

As httpx ships ``MockTransport``, the package ships `ScriptedBackend`. Nothing is executed:
when a sandbox starts, the backend asks the test's handler what its process does, and plays
that `Script`: lines on stdout (with pauses), files it leaves, its exit code, or a hang until
it is killed::

    def agent(sandbox: ScriptedSandbox) -> Script:
        assert "--resume" not in sandbox.spec.argv
        return Script(stdout=recorded_lines, files={"/app/results/report.md": b"# Done"})

    backend = ScriptedBackend(agent)

A sandbox's file system is a dict of absolute paths (`ScriptedSandbox.files`): `put_files`
writes into it, a started script adds its ``files``, `copy_out` copies from it under the same
caps and with the same report as the real backends, and `rerun` keeps it. A sandbox that is
not closed is left on the "engine", where `remove_orphans` finds it by its labels.

Timing follows a real process's: the script plays as its stdout is read; a script that
nobody reads plays out in `wait`; one whose reader stops early is stuck, as a process is on a
full pipe, until it is killed (or `wait`'s timeout kills it).

Warm sandboxes (`launch_warm`) wait in `ScriptedBackend.warm_sandboxes` with an empty file
system; a claim turns one into a `ScriptedSandbox` (its `ScriptedSandbox.warm` says which),
and a test makes one stop waiting with `ScriptedWarmSandbox.die`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import anyio

from proxy.sandbox.base import (
    LABEL_OWNER,
    LABEL_SERVER,
    Capabilities,
    CopyReport,
    ExitStatus,
    FileContent,
    ImageNotFound,
    Isolation,
    Orphans,
    SandboxError,
    SandboxSpec,
    SandboxStateError,
)
from proxy.sandbox.files import CopyBudget, clean_absolute_dir, clean_relative_path
from proxy.sandbox.warm import Takeover, WarmSpec

__all__ = ["Pause", "Script", "ScriptedBackend", "ScriptedSandbox", "ScriptedWarmSandbox"]

#: What a scripted backend claims by default: images (any, or those it is given), reruns,
#: warm sandboxes, and mounts (what a spec asks it to mount is taken as given).
SCRIPTED = Capabilities(
    runs_images=True, reruns=True, warm_pool=True, isolation=Isolation.FULL, mounts_host=True
)
#: The exit code of a killed process (128 + SIGKILL), as the real backends report it.
KILLED = 137


@dataclass(frozen=True, slots=True)
class Pause:
    """A pause between two lines of a script's stdout (ended early by a kill)."""

    seconds: float


@dataclass(frozen=True)
class Script:
    """What one process of a scripted sandbox does.

    ``stdout`` is printed line by line (a `Pause` waits); ``files`` (absolute paths) are in
    the sandbox from the start of the process. Then it exits with ``exit_code``, or, with
    ``hang``, keeps running until it is killed. ``stderr`` is what `Sandbox.stderr_tail`
    shows once it started.
    """

    stdout: Sequence[str | Pause] = ()
    exit_code: int = 0
    files: Mapping[str, bytes] = field(default_factory=dict)
    stderr: str = ""
    hang: bool = False
    oom_killed: bool = False


#: Decides what a sandbox's process does, each time one starts (also after `rerun`). It may
#: raise a `SandboxError`, which `start` then raises.
Handler = Callable[["ScriptedSandbox"], Script]


class ScriptedBackend:
    """Launches `ScriptedSandbox`es that play the ``handler``'s scripts.

    ``images``: the images present on the "engine" (`check_image` and `launch` refuse others
    with `ImageNotFound`); None: any image. ``capabilities``: what it claims to do, to test
    what the caller makes of each claim (it runs nothing, so nothing escapes it).
    """

    name = "scripted"

    def __init__(
        self,
        handler: Handler,
        *,
        images: Collection[str] | None = None,
        capabilities: Capabilities = SCRIPTED,
    ) -> None:
        self.handler = handler
        self.images = images
        self.capabilities = capabilities
        #: Every sandbox launched or claimed, in order.
        self.sandboxes: list[ScriptedSandbox] = []
        #: Every warm sandbox launched, in order.
        self.warm_sandboxes: list[ScriptedWarmSandbox] = []

    @property
    def open_sandboxes(self) -> list[ScriptedSandbox]:
        """The sandboxes not closed yet (the ones left on the engine)."""
        return [sandbox for sandbox in self.sandboxes if not sandbox.closed]

    @property
    def waiting(self) -> list[ScriptedWarmSandbox]:
        """The warm sandboxes neither claimed nor closed (waiting on the engine)."""
        return [warm for warm in self.warm_sandboxes if warm.waiting]

    async def ping(self) -> bool:
        return True

    async def check_image(self, image: str) -> None:
        if self.images is not None and image not in self.images:
            raise ImageNotFound(image)

    async def launch(self, spec: SandboxSpec) -> ScriptedSandbox:
        spec.check_limits()
        await self.check_image(spec.image)
        sandbox = ScriptedSandbox(self, spec)
        self.sandboxes.append(sandbox)
        return sandbox

    async def launch_warm(self, spec: WarmSpec) -> ScriptedWarmSandbox:
        if not self.capabilities.warm_pool:
            raise SandboxStateError("this scripted backend claims no warm pools")
        await self.check_image(spec.image)
        warm = ScriptedWarmSandbox(self, spec)
        self.warm_sandboxes.append(warm)
        return warm

    async def remove_orphans(self, orphans: Orphans) -> list[str]:
        removed: list[str] = []
        left: list[tuple[str, Mapping[str, str], ScriptedSandbox | ScriptedWarmSandbox]] = [
            *((s.run_id, s.spec.labels, s) for s in self.open_sandboxes),
            *((w.spec.id, w.spec.labels, w) for w in self.waiting),
        ]
        for run_id, labels, sandbox in left:
            if orphans.owner is not None and labels.get(LABEL_OWNER) != orphans.owner:
                continue
            if orphans.kept(run_id, labels.get(LABEL_SERVER)):
                continue
            await sandbox.close()
            removed.append(run_id)
        return removed

    async def aclose(self) -> None:
        """Nothing to release: sandboxes are left as they are, like on a real engine."""


class ScriptedWarmSandbox:
    """A scripted warm sandbox. Create with `ScriptedBackend.launch_warm`."""

    def __init__(self, backend: ScriptedBackend, spec: WarmSpec) -> None:
        self._backend = backend
        self.spec = spec
        #: The sandbox a run made of it, once claimed.
        self.claimed: ScriptedSandbox | None = None
        self.closed = False
        self.gone = False

    @property
    def waiting(self) -> bool:
        return self.claimed is None and not self.closed

    def die(self) -> None:
        """Stop waiting, as a container whose process was killed: a claim then fails."""
        self.gone = True

    async def claim(self, spec: SandboxSpec, takeover: Takeover | None = None) -> ScriptedSandbox:
        if not self.waiting:
            raise SandboxStateError("the warm sandbox was claimed or closed already")
        if not self.spec.fits(spec):
            raise SandboxStateError("the run does not fit the warm sandbox")
        if takeover is not None and self.spec.standby is None:
            raise SandboxStateError("the warm sandbox has no standby to take over")
        if self.gone:
            raise SandboxError("the warm sandbox no longer waits")
        spec.check_limits()
        sandbox = ScriptedSandbox(self._backend, dataclasses.replace(spec, run_id=self.spec.id))
        sandbox.warm = self
        sandbox.takeover = takeover
        self.claimed = sandbox
        self._backend.sandboxes.append(sandbox)
        return sandbox

    async def close(self) -> None:
        if self.claimed is None:
            self.closed = True


class ScriptedSandbox:
    """One scripted sandbox; see the module docstring. Create with `ScriptedBackend.launch`."""

    def __init__(self, backend: ScriptedBackend, spec: SandboxSpec) -> None:
        self._backend = backend
        #: The warm sandbox it was claimed from, if any.
        self.warm: ScriptedWarmSandbox | None = None
        #: How it took over that sandbox's standby, if it did.
        self.takeover: Takeover | None = None
        #: The spec of the current process (`rerun` replaces its argv and env).
        self.spec = spec
        #: The sandbox's files by absolute path.
        self.files: dict[str, bytes] = {}
        #: Every script played here, in order (one per start).
        self.scripts: list[Script] = []
        self.killed = False
        self.closed = False
        self._script: Script | None = None
        self._exit: ExitStatus | None = None
        self._ended = anyio.Event()
        self._lines_taken = False
        self._position = 0

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def running(self) -> bool:
        return self._script is not None and self._exit is None

    async def put_files(self, dest_dir: str, files: Mapping[str, FileContent]) -> None:
        if self._script is not None or self.closed:
            raise SandboxStateError("put_files is only possible before start")
        dest = clean_absolute_dir(dest_dir)
        for name, content in files.items():
            path = dest / clean_relative_path(name)
            if isinstance(content, bytes):
                data = content
            elif isinstance(content, Path):
                data = await anyio.Path(content).read_bytes()
            else:
                data = b"".join([chunk async for chunk in await content.open()])
            self.files[str(path)] = data

    async def start(self) -> None:
        if self.closed:
            raise SandboxStateError("the sandbox is closed")
        if self._script is not None:
            raise SandboxStateError("the sandbox was already started")
        script = self._backend.handler(self)
        for path, content in script.files.items():
            self.files[str(clean_absolute_dir(path))] = content
        self.scripts.append(script)
        self._script = script

    async def stdout_lines(self) -> AsyncGenerator[str, None]:
        self._require_started()
        if self._lines_taken:
            raise SandboxStateError("stdout_lines can be iterated only once")
        self._lines_taken = True
        async for line in self._play():
            yield line
        await self._ended.wait()  # a hanging process keeps its stdout open

    def stderr_tail(self) -> str:
        return self._script.stderr if self._script is not None else ""

    async def wait(self, timeout: float | None = None) -> ExitStatus:  # noqa: ASYNC109
        self._require_started()
        with anyio.move_on_after(timeout) as scope:
            if not self._lines_taken:
                async for _ in self._play():
                    pass
            await self._ended.wait()
        if scope.cancelled_caught:
            await self.kill()
        assert self._exit is not None
        return dataclasses.replace(self._exit, timed_out=scope.cancelled_caught)

    async def kill(self) -> None:
        if self.running:
            self.killed = True
            self._end(ExitStatus(KILLED))

    async def copy_out(
        self, src_dir: str, dest: Path, max_bytes: int, max_files: int
    ) -> CopyReport:
        if self.closed:
            raise SandboxStateError("the sandbox is closed")
        src = clean_absolute_dir(src_dir)
        budget = CopyBudget(max_bytes, max_files)
        await anyio.Path(dest).mkdir(parents=True, exist_ok=True)
        for name, content in sorted(self.files.items()):
            path = PurePosixPath(name)
            if src not in path.parents:
                continue
            relative = path.relative_to(src).as_posix()
            if budget.admit(relative, len(content)):
                target = anyio.Path(dest / relative)
                await target.parent.mkdir(parents=True, exist_ok=True)
                await target.write_bytes(content)
                budget.copied(relative, len(content))
        return budget.report

    async def rerun(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        if self.closed:
            raise SandboxStateError("the sandbox is closed")
        if self.running:
            raise SandboxStateError("the sandbox's process is still running")
        self.spec = dataclasses.replace(self.spec, argv=tuple(argv), env=dict(env))
        self.spec.check_limits()
        self._script = None
        self._exit = None
        self._ended = anyio.Event()
        self._lines_taken = False
        self._position = 0

    async def close(self) -> None:
        if not self.closed:
            await self.kill()
            self.closed = True

    async def _play(self) -> AsyncIterator[str]:
        """The script's lines from where it stands; it ends (or hangs) after the last."""
        script = self._script
        assert script is not None
        while self._position < len(script.stdout) and not self._ended.is_set():
            item = script.stdout[self._position]
            self._position += 1
            if isinstance(item, Pause):
                with anyio.move_on_after(item.seconds):
                    await self._ended.wait()
            else:
                yield item
        if not self._ended.is_set() and not script.hang:
            self._end(ExitStatus(script.exit_code, oom_killed=script.oom_killed))

    def _end(self, status: ExitStatus) -> None:
        self._exit = status
        self._ended.set()

    def _require_started(self) -> None:
        if self._script is None:
            raise SandboxStateError("start the sandbox first")
