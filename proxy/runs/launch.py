"""What the HTTP edge hands the run engine: a checked run, and the engine's configuration."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from proxy.agents import AgentAdapter
from proxy.agents.install import InstalledAgent
from proxy.jetty import RunPlan
from proxy.relay.tokens import ProviderCreds
from proxy.runs.artifacts import ResultLimits
from proxy.runs.followup import Continuation
from proxy.sandbox import FileContent
from proxy.store.records import TrajectoryStatus

RELAY_MOUNT = "/run/jetty"
# Inside the sandbox, not on the host: a writable home in any image.
AGENT_HOME = "/tmp/jetty-home"  # noqa: S108
# Key of a trajectory's environment naming the run whose (kept) sandbox the run used.
SANDBOX_OF = "sandbox_of"
# Key of a trajectory's environment naming the serving process that ran it.
SERVER = "server"
LIVE_STATUSES: tuple[TrajectoryStatus, ...] = ("pending", "running")


@dataclass(frozen=True)
class AgentSetup:
    """The agent CLI on the host, ready to mount: its install and, for agents that only take
    a URL, the directory of the loopback forwarder."""

    installed: InstalledAgent
    forwarder_dir: Path | None = None


@dataclass(frozen=True)
class RunLaunch:
    """A run that passed every check: what to start, where, with what."""

    run_id: str
    collection: str
    task: str
    plan: RunPlan
    adapter: AgentAdapter
    # The agent, when it was ready at the edge; else ``setup`` installs it inside the run.
    agent: AgentSetup | None
    image: str
    inputs: Mapping[str, FileContent] = field(default_factory=dict)
    # Absolute URL of this server as the client reached it, for links to result files.
    base_url: str = ""
    setup: Callable[[], Awaitable[AgentSetup]] | None = None
    # Where this run's model calls go instead of the server's defaults (provider, collection key).
    credentials: ProviderCreds | None = None
    # A follow-up turn: the run it continues, and that run's input files (put back when the
    # turn cannot run in the earlier sandbox).
    continuation: Continuation | None = None
    previous_inputs: Mapping[str, FileContent] = field(default_factory=dict)
    # Absolute URL of the trajectory, named by the line that ends the answer.
    trajectory_url: str = ""


@dataclass(frozen=True)
class EngineConfig:
    relay_socket: Path
    results: ResultLimits
    # Labels this installation's sandboxes, so recovery never touches another proxy's.
    owner: str = "default"
    # This serving process (unique per start): its sandboxes stay its own while it beats
    # (every heartbeat_seconds; gone after server_stale_seconds without; see
    # RunEngine.keep_beating for sweep_seconds).
    server_id: str = "server"
    heartbeat_seconds: float = 10.0
    server_stale_seconds: float = 120.0
    sweep_seconds: float = 60.0
    cleanup_timeout: float = 30.0
    # How long a finished run's sandbox is kept for a follow-up turn (0: never).
    keep_sandbox_seconds: float = 0.0
    # Caps on the agent HOME saved at the end of each run, to resume its session later.
    session_max_bytes: int = 64 * 1024 * 1024
    session_max_files: int = 10_000
