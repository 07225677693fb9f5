"""What the checks hand the run engine (a checked run), and the engine's configuration."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from proxy.agents import AgentAdapter
from proxy.environments import CheckedEnvironment
from proxy.jetty import RunPlan
from proxy.relay.tokens import ProviderCreds
from proxy.runs.agent import AgentSetup
from proxy.runs.artifacts import ResultLimits
from proxy.runs.followup import Continuation
from proxy.sandbox import FileContent
from proxy.store.records import TrajectoryStatus

# Inside the sandbox, not on the host: a writable home in any image.
AGENT_HOME = "/tmp/jetty-home"  # noqa: S108
# Key of a trajectory's environment naming the run whose (kept) sandbox the run used.
SANDBOX_OF = "sandbox_of"
# Key of a trajectory's environment naming the serving process that ran it.
SERVER = "server"
LIVE_STATUSES: tuple[TrajectoryStatus, ...] = ("pending", "running")


def environment_record(
    image: str, backend: str, server: str, *, sandbox_of: str | None = None
) -> dict[str, str]:
    """A run's trajectory ``environment``, always whole (it is written whole): recovery reads
    its `SERVER` and `SANDBOX_OF` (see `proxy.runs.engine.RunEngine.recover`)."""
    record = {"image": image, "backend": backend, SERVER: server}
    if sandbox_of is not None:
        record[SANDBOX_OF] = sandbox_of
    return record


@dataclass(frozen=True)
class RunLaunch:
    """A run that passed every check: what to start, where, with what."""

    run_id: str
    collection: str
    task: str
    plan: RunPlan
    adapter: AgentAdapter
    # The agent, when it was ready at the checks; else the run installs it, in its stream.
    agent: AgentSetup | None
    # The image the run uses, decided by the checks (prepared in the run on an image engine).
    environment: CheckedEnvironment
    inputs: Mapping[str, FileContent] = field(default_factory=dict)
    # Absolute URL of this server as the client reached it, for links to result files.
    base_url: str = ""
    # Where this run's model calls go instead of the server's defaults (provider, collection key).
    credentials: ProviderCreds | None = None
    # A follow-up turn: the run it continues, and that run's input files (put back when the
    # turn cannot run in the earlier sandbox).
    continuation: Continuation | None = None
    previous_inputs: Mapping[str, FileContent] = field(default_factory=dict)
    # Absolute URL of the trajectory, named by the line that ends the answer.
    trajectory_url: str = ""
    # The collection's secrets by name: replaced in everything the run shows live.
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    # The key that started the run (its spend counts against the key too).
    key_id: str | None = None


@dataclass(frozen=True)
class EngineConfig:
    # The model relay: its unix socket on this machine, and the URL at which sandboxes reach
    # it over a network (served when relay_port is set; see proxy.runs.runtime).
    relay_socket: Path
    results: ResultLimits
    relay_url: str | None = None
    # Labels this installation's sandboxes, so recovery never touches another proxy's.
    owner: str = "default"
    # This serving process (unique per start): its sandboxes stay its own while it beats
    # (every heartbeat_seconds; gone after server_stale_seconds without; see
    # RunEngine.keep_beating for sweep_seconds).
    server_id: str = "server"
    heartbeat_seconds: float = 10.0
    server_stale_seconds: float = 120.0
    sweep_seconds: float = 60.0
    # How often the records of this server's live runs and kept sandboxes are read for what
    # other servers decided (cancelled, continued), besides when the database tells of it.
    watch_seconds: float = 1.0
    cleanup_timeout: float = 30.0
    # How long a finished run's sandbox is kept for a follow-up turn (0: never).
    keep_sandbox_seconds: float = 0.0
    # Caps on the agent HOME saved at the end of each run, to resume its session later.
    session_max_bytes: int = 64 * 1024 * 1024
    session_max_files: int = 10_000
