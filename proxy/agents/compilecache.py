"""Node's on-disk compile cache for agent CLIs that are Node scripts, made once per install.

Gemini CLI spends about a third of its start compiling its ~100 MB of bundled JavaScript
(0.9 s to its first event without the cache, 0.65 s with it, on a 2-core host). Node keeps
compiled code on disk where ``NODE_COMPILE_CACHE`` points, but writes it only when a process
exits, and a sandbox's writes die with the sandbox. So the cache is made once, when the CLI is
installed, by running the CLI on the host as a run would (against a model address where
nothing listens, so it stops at its first model call), and then mounted read-only with the
install (``.jetty-compile-cache`` in it).

Node (22) files each cached script under ``crc32(type byte + name)`` in a directory named
after its version and the user's id, where the name is the script's ``file://`` URL (ES
modules, type 1) or path (CommonJS, type 0); the entry itself holds the source's size and
hash, and Node checks those before using it. The sandbox sees the install at its mount point,
not where it lies on the host, so each entry is renamed to the key of its sandbox name, and
the directory to that of user 0 (the default user of most images; a sandbox running as
another user misses the cache and compiles, as it would without). An entry Node does not
accept costs nothing but the compile it would have done anyway.

    prepared = await prepare_compile_cache(installed, adapter)   # False: left without
    env["NODE_COMPILE_CACHE"] = installed.compile_cache_dir      # inside the sandbox
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import anyio
import anyio.to_thread

from proxy.agents.base import AgentAdapter, AgentSpec

__all__ = [
    "COMPILE_CACHE_DIR",
    "cache_key",
    "compile_cache_entries",
    "compile_cache_ready",
    "file_url",
    "prepare_compile_cache",
]

COMPILE_CACHE_DIR = ".jetty-compile-cache"
_READY = ".ready.json"
_RUN_SECONDS = 50.0
# Node's cache types: CommonJS and ES modules (src/compile_cache.h).
_TYPES = {0: "path", 1: "url"}
# What Node's pathToFileURL (22) percent-encodes in a path: controls, space and anything
# outside printable ASCII, and these (checked against Node by the tests).
_URL_ENCODED = frozenset(b'"#%<>?[\\]^`{|}~')


def compile_cache_entries(install_dir: Path) -> int | None:
    """How many scripts the compile cache of ``install_dir`` holds (0: the CLI left none);
    None when none was made yet."""
    try:
        ready = json.loads((install_dir / COMPILE_CACHE_DIR / _READY).read_text())
    except (OSError, ValueError):
        return None
    entries = ready.get("entries") if isinstance(ready, dict) else None
    return entries if isinstance(entries, int) else None


def compile_cache_ready(install_dir: Path) -> bool:
    """Whether ``install_dir`` has a compile cache with something in it."""
    return (compile_cache_entries(install_dir) or 0) > 0


def file_url(path: str) -> str:
    """``path`` as Node's ``pathToFileURL`` spells it on Linux."""
    encoded = "".join(
        f"%{byte:02X}" if byte <= 0x20 or byte >= 0x7F or byte in _URL_ENCODED else chr(byte)
        for byte in path.encode("utf-8")
    )
    return f"file://{encoded}"


def cache_key(kind: int, name: str) -> str:
    """The file name Node gives the cache entry of a script called ``name``."""
    return f"{zlib.crc32(bytes([kind]) + name.encode('utf-8')):08x}"


async def prepare_compile_cache(
    host_dir: Path,
    mount_point: str,
    host_argv: tuple[str, ...],
    path_entries: tuple[str, ...],
    adapter: AgentAdapter,
) -> bool:
    """Make the compile cache of the install at ``host_dir`` (mounted at ``mount_point`` in
    sandboxes, started with ``host_argv`` on the host); False when the CLI left none.

    Made once: a cache made before, even an empty one, is kept (an install whose CLI leaves
    none is not run again at every start).
    """
    made = await anyio.to_thread.run_sync(compile_cache_entries, host_dir)
    if made is not None:
        return made > 0
    with tempfile.TemporaryDirectory(prefix=".jetty-ncc-", dir=host_dir) as scratch:
        raw, home = Path(scratch) / "raw", Path(scratch) / "home"
        await _run_once(host_argv, path_entries, adapter, raw, home)
        staged = Path(scratch) / "staged"
        entries = await anyio.to_thread.run_sync(
            _rename_for_sandbox, raw, staged, host_dir, mount_point
        )
        await anyio.to_thread.run_sync(_move_into_place, staged, host_dir / COMPILE_CACHE_DIR)
    return entries > 0


async def _run_once(
    host_argv: tuple[str, ...],
    path_entries: tuple[str, ...],
    adapter: AgentAdapter,
    cache: Path,
    home: Path,
) -> None:
    """Run the CLI as a run starts it, until its first model call fails; Node writes the
    compile cache as it exits."""
    invocation = adapter.build(
        AgentSpec(
            prompt="Say hello.",
            model=f"{adapter.model_prefixes[0]}compile-cache",
            # Nothing listens on port 1: the first model call fails at once, on loopback.
            relay_base_url="http://127.0.0.1:1",
            relay_token="compile-cache",
            home=str(home),
            workdir=str(home),
        )
    )
    await anyio.to_thread.run_sync(_write_files, home, invocation.files)
    env = {
        **invocation.env,
        "PATH": ":".join([*path_entries, "/usr/bin:/bin"]),
        "LANG": "C.UTF-8",
        "NODE_COMPILE_CACHE": str(cache),
    }
    argv = [*host_argv, *invocation.argv[1:]]
    with anyio.move_on_after(_RUN_SECONDS):
        await anyio.run_process(argv, env=env, cwd=home, check=False)


def _write_files(home: Path, files: Mapping[str, bytes]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    for path, content in files.items():
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


def _rename_for_sandbox(raw: Path, staged: Path, host_dir: Path, mount_point: str) -> int:
    """Copy the entries Node wrote in ``raw`` to ``staged`` under their sandbox names; the
    number of entries kept."""
    renames: dict[str, str] = {}
    real = host_dir.resolve()  # Node names a script by its real path
    for relative in _scripts(real):
        host, sandbox = f"{real}/{relative}", f"{mount_point}/{relative}"
        for kind, form in _TYPES.items():
            spell = file_url if form == "url" else str
            renames[cache_key(kind, spell(host))] = cache_key(kind, spell(sandbox))
    kept = 0
    for tag in (p for p in raw.iterdir() if p.is_dir()) if raw.is_dir() else ():
        target = staged / _root_tag(tag.name)
        target.mkdir(parents=True, exist_ok=True)
        for entry in tag.iterdir():
            renamed = renames.get(entry.name)
            if renamed is not None and entry.is_file():
                shutil.copyfile(entry, target / renamed)
                kept += 1
    staged.mkdir(parents=True, exist_ok=True)
    (staged / _READY).write_text(json.dumps({"entries": kept, "mount_point": mount_point}))
    return kept


def _scripts(root: Path) -> Iterator[str]:
    """The JavaScript files under ``root``, as '/'-separated paths relative to it."""
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".jetty-")]
        for name in files:
            if name.endswith((".js", ".mjs", ".cjs")):
                yield Path(directory, name).relative_to(root).as_posix()


def _root_tag(tag: str) -> str:
    """Node's cache directory name for user 0 in place of this process's user."""
    suffix = f"-{os.getuid()}"
    return tag[: -len(suffix)] + "-0" if tag.endswith(suffix) else tag


def _move_into_place(staged: Path, final: Path) -> None:
    # Readable by any user of any image, as the install itself.
    for directory, _, files in os.walk(staged):
        os.chmod(directory, 0o755)  # noqa: S103
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)
    if compile_cache_entries(final.parent) is not None:  # another process finished first
        return
    if final.exists():  # a broken earlier one
        shutil.rmtree(final, ignore_errors=True)
    staged.rename(final)
