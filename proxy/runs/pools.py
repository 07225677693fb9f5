"""Warm pools: sandboxes started before the runs that claim them.

A preset or a snapshot with ``warm = N`` gets a pool: N sandboxes of its environment created
and started ahead of time, with the agent CLIs and the relay mounted and nothing of any run
inside (`~proxy.sandbox.warm.WarmSpec`: no command, environment or file). A run whose sandbox
would look the same (image, limits, network, mounts: `WarmSpec.fits`) claims one instead of
launching its own; its files, environment and command (its relay token and secrets with them)
reach the sandbox only then. A claimed sandbox serves that run alone and is removed like any
other; the pool starts another in the background. With no sandbox ready, the run starts cold
(a miss). Only backends whose capabilities say ``warm_pool`` have pools::

    pools = WarmPools(pool_definitions(settings))
    tg.start_soon(pools.keep_filled, deps, launcher)   # resolve each pool, keep it full
    sandbox = await pools.claim(spec)                  # None: launch one
    await pools.close()                                # at shutdown: remove the waiting ones

A pool's environment is decided as its runs' are: a preset's is planned from its own jetty
block and runbook (`proxy.runs.checks.plan`), a snapshot's with the server's default limits;
the image is then built or pulled where the backend builds images.

A preset's sandboxes also start its agent ahead of its runs where the agent can wait for
its run (`~proxy.agents.StandbyAgent`; `proxy.runs.sandboxspec.standby_agent`): loaded, with a
relay token that grants nothing until a run claims the sandbox, its instruction, system
prompt and secrets unknown. A run that asks for exactly what was started takes it over
(`claim`'s ``takeover_of``; the run's grant then admits the token); any other run's claim
stops it and starts the run's own command.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio

from proxy.agents import AgentAdapter, get_adapter
from proxy.agents.install import AgentInstallError
from proxy.auth import LOCAL_PRINCIPAL
from proxy.errors import ProxyError
from proxy.jetty import Environment, RunPlan, parse_jetty_block
from proxy.presets import Preset, preset_request
from proxy.runs.agent import AgentSetup, prepare_agent
from proxy.runs.checks import RunRequest, plan
from proxy.runs.deps import RunDeps
from proxy.runs.environment import check_environment
from proxy.runs.sandboxspec import (
    RunTakeover,
    StandbyAgentStart,
    agent_mounts,
    standby_agent,
)
from proxy.sandbox import Mount, Sandbox, SandboxError, SandboxSpec
from proxy.sandbox.base import LABEL_OWNER, LABEL_SERVER
from proxy.sandbox.warm import WarmLauncher, WarmSandbox, WarmSpec
from proxy.settings import Settings
from proxy.store import StoreError

__all__ = [
    "Claimed",
    "PoolDefinition",
    "PoolStats",
    "TakeoverOf",
    "WarmPools",
    "pool_definitions",
]

logger = logging.getLogger("proxy.runs")

# The instruction a preset's pool is planned with (a run's own never reaches the pool).
_PLANNING_PROMPT = "(warm pool)"
# A launch runs shielded (a cancelled one would leave a container behind), within this.
_LAUNCH_SECONDS = 120.0


@dataclass(frozen=True)
class PoolDefinition:
    """A pool the settings ask for: ``size`` sandboxes for the runs of ``preset`` (planned
    as they are) or of the snapshot ``snapshot`` (with the server's default limits)."""

    name: str
    size: int
    preset: Preset | None = None
    snapshot: str | None = None


@dataclass(frozen=True)
class PoolStats:
    """One pool, for /metrics: sandboxes waiting, claimed so far (``taken_over``: of those,
    the runs that took over the agent started in them), and runs that found none."""

    name: str
    size: int
    ready: int
    claimed: int
    misses: int
    taken_over: int = 0


# What a run makes of an agent started ahead of it (`takeover_spec`); None: it cannot take
# it over.
TakeoverOf = Callable[[StandbyAgentStart], RunTakeover | None]


@dataclass(frozen=True)
class Claimed:
    """A warm sandbox claimed for a run; ``taken``: how the run took over the agent started
    in it, if it did (its token is then to be admitted as the run's before the start)."""

    sandbox: Sandbox
    taken: RunTakeover | None = None


def pool_definitions(settings: Settings) -> list[PoolDefinition]:
    """The pools of the presets and snapshots whose ``warm`` is above 0."""
    pools = [
        PoolDefinition(f"preset:{name}", preset.warm, preset=preset)
        for name, preset in sorted(settings.presets.items())
        if preset.warm > 0
    ]
    pools += [
        PoolDefinition(f"snapshot:{name}", snapshot.warm, snapshot=name)
        for name, snapshot in sorted(settings.snapshots.items())
        if snapshot.warm and snapshot.warm > 0
    ]
    return pools


@dataclass(eq=False)
class _Pool:
    definition: PoolDefinition
    # The sandboxes of the pool look like this (mounts aside), once resolved.
    shape: WarmSpec | None = None
    # The agent a preset's runs use: installed before the pool fills.
    adapter: AgentAdapter | None = None
    ready: list[WarmSandbox] = field(default_factory=list)
    # The agents started in them, by warm sandbox id.
    agents: dict[str, StandbyAgentStart] = field(default_factory=dict)
    # A preset's plan, for the agents its sandboxes start.
    plan: RunPlan | None = None
    claimed: int = 0
    taken_over: int = 0
    misses: int = 0
    wake: anyio.Event = field(default_factory=anyio.Event)

    @property
    def name(self) -> str:
        return self.definition.name

    def same_shape(self, spec: SandboxSpec) -> bool:
        shape = self.shape
        return shape is not None and shape.the_shape_of(spec)


# A warm sandbox to claim: its pool, and how the run takes over the agent started in it.
_Choice = tuple[_Pool, WarmSandbox, RunTakeover | None]


class WarmPools:
    """The server's warm pools (none: every run starts cold)."""

    def __init__(
        self,
        definitions: Sequence[PoolDefinition],
        *,
        retry_seconds: float = 30.0,
        standby_agents: bool = True,
    ):
        self._pools = [_Pool(definition) for definition in definitions]
        self.retry_seconds = retry_seconds
        # Whether preset pools start their agent ahead of their runs (where it can).
        self.standby_agents = standby_agents

    def __bool__(self) -> bool:
        return bool(self._pools)

    def stats(self) -> list[PoolStats]:
        return [
            PoolStats(
                p.definition.name,
                p.definition.size,
                len(p.ready),
                p.claimed,
                p.misses,
                p.taken_over,
            )
            for p in self._pools
        ]

    async def keep_filled(self, deps: RunDeps, launcher: WarmLauncher) -> None:
        """Fill every pool, and refill it after each claim, until cancelled."""
        async with anyio.create_task_group() as tg:
            for pool in self._pools:
                tg.start_soon(self._keep, pool, deps, launcher, name=pool.definition.name)

    async def claim(
        self, spec: SandboxSpec, takeover_of: TakeoverOf | None = None
    ) -> Claimed | None:
        """A warm sandbox for ``spec``, now the run's (see `~proxy.sandbox.WarmSandbox.claim`);
        None when none fits (a miss of the pool of its shape, if there is one).

        A sandbox whose started agent ``takeover_of`` says the run can take over is chosen
        first (`Claimed.taken`), then one that started no agent, last one whose agent the
        claim then stops."""
        while (choice := self._choose(spec, takeover_of)) is not None:
            pool, warm, taken = choice
            pool.ready.remove(warm)
            pool.agents.pop(warm.spec.id, None)
            pool.wake.set()
            try:
                if taken is None:
                    sandbox = await warm.claim(spec)
                else:
                    sandbox = await warm.claim(taken.spec, taken.takeover)
                    pool.taken_over += 1
            except SandboxError as exc:
                logger.warning("warm sandbox %s of %s: %s", warm.spec.id, pool.name, exc)
                with anyio.CancelScope(shield=True):
                    await warm.close()
                continue
            pool.claimed += 1
            return Claimed(sandbox, taken)
        for pool in self._pools:
            if pool.same_shape(spec):
                pool.misses += 1
                break
        return None

    def _choose(self, spec: SandboxSpec, takeover_of: TakeoverOf | None) -> _Choice | None:
        """The warm sandbox ``spec`` should claim, in `claim`'s order of preference."""
        plain: _Choice | None = None
        stopping: _Choice | None = None
        for pool in self._pools:
            for warm in pool.ready:
                if not warm.spec.fits(spec):
                    continue
                agent = pool.agents.get(warm.spec.id)
                if agent is None:
                    plain = plain or (pool, warm, None)
                    continue
                taken = takeover_of(agent) if takeover_of is not None else None
                if taken is not None:
                    return pool, warm, taken
                stopping = stopping or (pool, warm, None)
        return plain or stopping

    async def close(self) -> None:
        """Remove every sandbox still waiting (the server stops)."""
        with anyio.CancelScope(shield=True):
            for pool in self._pools:
                waiting, pool.ready = pool.ready, []
                pool.agents.clear()
                for warm in waiting:
                    try:
                        await warm.close()
                    except SandboxError as exc:  # recovery removes what is left
                        logger.warning("could not remove warm sandbox %s: %s", warm.spec.id, exc)

    async def _keep(self, pool: _Pool, deps: RunDeps, launcher: WarmLauncher) -> None:
        while True:
            wake = pool.wake = anyio.Event()
            try:
                if pool.shape is None:
                    await self._resolve(pool, deps)
                while len(pool.ready) < pool.definition.size:
                    await self._launch(pool, deps, launcher)
            except (ProxyError, SandboxError, AgentInstallError, StoreError) as exc:
                logger.warning(
                    "warm pool %s: %s (trying again in %g s)", pool.name, exc, self.retry_seconds
                )
                await anyio.sleep(self.retry_seconds)
                continue
            await wake.wait()

    async def _resolve(self, pool: _Pool, deps: RunDeps) -> None:
        """The shape of the pool's sandboxes: its environment's image, limits and network."""
        definition = pool.definition
        cpus, memory_bytes = deps.defaults.cpus, deps.defaults.memory_bytes
        network = deps.defaults.network_enabled
        if definition.preset is not None:
            preset = definition.preset
            prompt = [{"role": "user", "content": _PLANNING_PROMPT}]
            messages, block = preset_request(preset, prompt, None)
            request = RunRequest(
                LOCAL_PRINCIPAL, preset.model, messages, parse_jetty_block(block), ""
            )
            draft = await plan(request, deps)
            environment = draft.plan.environment
            cpus, memory_bytes = draft.plan.cpus, draft.plan.memory_bytes
            network = draft.plan.network_enabled
            pool.adapter = draft.adapter
            pool.plan = draft.plan
        else:
            environment = Environment("snapshot", definition.snapshot)
        checked = await check_environment(environment, deps.backend, deps.environments)
        image = checked.reference
        if deps.environments is not None:

            async def say(text: str) -> None:
                logger.info("warm pool %s: %s", pool.name, text)

            image = (await deps.environments.prepare(checked, progress=say)).reference
        config = deps.config
        pool.shape = WarmSpec(
            id="",
            pool=pool.name,
            image=image,
            cpus=cpus,
            memory_bytes=memory_bytes,
            network_enabled=network,
            labels={LABEL_OWNER: config.owner, LABEL_SERVER: config.server_id},
        )

    async def _launch(self, pool: _Pool, deps: RunDeps, launcher: WarmLauncher) -> None:
        assert pool.shape is not None
        agent = await self._agent(pool, deps)
        spec = dataclasses.replace(
            pool.shape,
            id=f"warm-{secrets.token_hex(6)}",
            mounts=tuple(await _mounts(deps, pool.adapter)),
            standby=agent.standby if agent is not None else None,
        )
        # Shielded: a launch cut short could leave its container behind, unknown to the pool.
        with anyio.CancelScope(shield=True), anyio.fail_after(_LAUNCH_SECONDS):
            warm = await launcher.launch_warm(spec)
            if agent is not None:
                pool.agents[spec.id] = agent
            pool.ready.append(warm)

    async def _agent(self, pool: _Pool, deps: RunDeps) -> StandbyAgentStart | None:
        """The agent a preset's sandbox starts ahead of its run, where it can."""
        if pool.adapter is None or pool.plan is None or not self.standby_agents:
            return None
        setup = await prepare_agent(
            deps.agents, pool.adapter, mounts_host=deps.backend.capabilities.mounts_host
        )
        return standby_agent(pool.adapter, setup, deps.config, deps.backend.capabilities, pool.plan)


async def _mounts(deps: RunDeps, adapter: AgentAdapter | None) -> list[Mount]:
    """The mounts of a warm sandbox: every installed agent's, as its runs would have them
    (``adapter``'s installed first)."""
    if not deps.backend.capabilities.mounts_host:
        return []  # the backend brings the agents and the relay itself
    if adapter is not None and not deps.agents.status(adapter).installed:
        await prepare_agent(deps.agents, adapter, mounts_host=True)
    mounts: list[Mount] = []
    for status in deps.agents.list():
        if not status.installed:
            continue
        agent_adapter = get_adapter(status.name)
        try:
            agent: AgentSetup = await prepare_agent(deps.agents, agent_adapter, mounts_host=True)
        except AgentInstallError as exc:  # its runs start cold
            logger.warning("warm sandboxes go without %s: %s", status.name, exc)
            continue
        tcp = agent_adapter.relay_transport == "tcp"
        mounts += [m for m in agent_mounts(agent, deps.config, forwarder=tcp) if m not in mounts]
    return mounts
