"""The agent CLI a run mounts: its install in the host's cache, and the forwarder it may need."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from proxy.agents import AgentAdapter
from proxy.agents.forwarder import ensure_forwarder
from proxy.agents.install import AgentCache, InstalledAgent

__all__ = ["AgentSetup", "prepare_agent"]


@dataclass(frozen=True)
class AgentSetup:
    """The agent CLI on the host, ready to mount: its install and, for agents that only take
    a URL, the directory of the loopback forwarder."""

    installed: InstalledAgent
    forwarder_dir: Path | None = None


async def prepare_agent(agents: AgentCache, adapter: AgentAdapter) -> AgentSetup:
    """``adapter``'s CLI from ``agents`` (installed on its first use) and its forwarder.

    Raises `~proxy.agents.install.AgentInstallError` when either cannot be had.
    """
    installed = await agents.ensure(adapter)
    forwarder_dir = None
    if adapter.relay_transport == "tcp":
        forwarder_dir = (await ensure_forwarder(agents.root)).parent
    return AgentSetup(installed, forwarder_dir)
