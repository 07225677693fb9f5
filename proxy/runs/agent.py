"""The agent CLI a run's sandbox gets: where it is inside, and where it comes from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from proxy.agents import AgentAdapter
from proxy.agents.forwarder import ensure_forwarder
from proxy.agents.install import AgentCache
from proxy.agents.layout import AgentLayout, InstalledAgent, pinned_layout
from proxy.sandbox import AgentTools

__all__ = ["AgentSetup", "prepare_agent"]


@dataclass(frozen=True)
class AgentSetup:
    """The agent CLI of a run: where it is inside the sandbox (``layout``), this machine's
    install of it (``installed``; None where the backend brings the agent itself) and, for
    agents that only take a URL, the directory of this machine's loopback forwarder."""

    layout: AgentLayout
    installed: InstalledAgent | None = None
    forwarder_dir: Path | None = None

    def tools(self) -> AgentTools:
        """What the sandbox spec asks for."""
        layout = self.layout
        host_dir = self.installed.host_dir if self.installed is not None else None
        return AgentTools(layout.name, layout.version, layout.mount_point, host_dir)


async def prepare_agent(
    agents: AgentCache, adapter: AgentAdapter, *, mounts_host: bool
) -> AgentSetup:
    """``adapter``'s CLI for a sandbox that mounts this machine's install (``mounts_host``:
    installed from ``agents`` on its first use, with the forwarder it may need), or for one
    whose backend brings it (nothing to do here: its pinned layout).

    Raises `~proxy.agents.install.AgentInstallError` when either cannot be had.
    """
    if not mounts_host:
        return AgentSetup(pinned_layout(adapter))
    installed = await agents.ensure(adapter)
    forwarder_dir = None
    if adapter.relay_transport == "tcp":
        forwarder_dir = (await ensure_forwarder(agents.root)).parent
    return AgentSetup(installed.layout, installed, forwarder_dir)
