"""Runs under limits, and what their model calls cost, on the scripted sandbox backend: a run
over a cap is refused before its trajectory or sandbox exists; a run's cost is the sum of its
priced model calls, recorded per call and on the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.agents.install import AgentCache
from proxy.prices import ModelPrice, PriceBook
from proxy.quota import Limits, QuotaConfig, QuotaExceeded, Quotas, RateLimited
from proxy.relay.tokens import ModelUsage, RunGrant
from proxy.runs.live import LiveRun
from proxy.runs.service import Runs
from proxy.sandbox import Script, ScriptedBackend
from proxy.store import Store
from tests.support.runs import CLAUDE, finished, request, runs_on, started_agent

pytestmark = pytest.mark.anyio

#: $1 per million tokens in, $2 out: a call of 1000 in and 500 out costs $0.002.
PRICES = PriceBook({"priced-model": ModelPrice(input_usd_per_mtok=1, output_usd_per_mtok=2)})


def hanging() -> ScriptedBackend:
    return ScriptedBackend(lambda _: Script(stdout=CLAUDE[:1], hang=True))


def quotas(store: Store, **acme: object) -> Quotas:
    return Quotas(store, QuotaConfig(Limits(), {"acme": Limits.model_validate(acme)}))


def grant_of(runs: Runs, backend: ScriptedBackend, live: LiveRun) -> RunGrant:
    """What the relay knows the run's token by (once its sandbox is up)."""
    [sandbox] = [s for s in backend.sandboxes if s.run_id == live.run_id]
    grant = runs.deps.tokens.lookup(sandbox.spec.env["ANTHROPIC_API_KEY"])
    assert grant is not None
    return grant


async def going(runs: Runs, backend: ScriptedBackend, **fields: Any) -> tuple[LiveRun, RunGrant]:
    """A run started and going (its agent started), and its token's grant."""
    live = (await runs.start(request(**fields))).live
    await started_agent(live)
    return live, grant_of(runs, backend, live)


async def report_call(grant: RunGrant, model: str) -> None:
    """A model call of the run, as the relay reports it."""
    assert grant.on_usage is not None
    await grant.on_usage(ModelUsage("anthropic", model, input_tokens=1000, output_tokens=500))


async def test_a_run_over_max_concurrent_runs_is_refused_before_anything_exists(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    backend = hanging()
    limits = quotas(store, max_concurrent_runs=1)
    async with runs_on(store, tmp_path, backend, agents=agent_cache, quotas=limits) as runs:
        first = (await runs.start(request())).live
        await started_agent(first)
        with pytest.raises(RateLimited) as refused:
            await runs.start(request())
        assert (refused.value.status_code, refused.value.code) == (429, "rate_limit_exceeded")
        # Neither a trajectory nor a sandbox of the refused run.
        assert len(backend.sandboxes) == 1
        assert (await store.list_trajectories("acme")).total == 1
        assert limits.refusals["acme", "max_concurrent_runs"] == 1
        assert limits.live_runs["acme"] == 1
        first.cancel()
        await finished(first)
        second = (await runs.start(request())).live
        await started_agent(second)
        assert len(backend.sandboxes) == 2
        second.cancel()
        await finished(second)
    assert limits.live_runs["acme"] == 0


async def test_a_run_costs_the_sum_of_its_priced_model_calls(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    backend = hanging()
    limits = quotas(store)
    async with runs_on(
        store, tmp_path, backend, agents=agent_cache, prices=PRICES, quotas=limits
    ) as runs:
        live, grant = await going(runs, backend)
        await report_call(grant, "priced-model")
        await report_call(grant, "priced-model")
        live.cancel()
        await finished(live)
        assert live.cost.total == pytest.approx(0.004)
        # A call the relay reports after the run's record was written still counts.
        await report_call(grant, "priced-model")
    record = await store.get_trajectory(live.run_id)
    assert record is not None and record.cost_usd == pytest.approx(0.006)
    calls = [e.data for e in await store.events_after(live.run_id) if e.type == "model_call"]
    assert [call["cost_usd"] for call in calls] == [pytest.approx(0.002)] * 3
    assert calls[0]["model"] == "priced-model"
    assert limits.spend["acme"] == pytest.approx(0.006)


async def test_a_run_with_a_call_of_unknown_price_has_an_unknown_cost(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    backend = hanging()
    async with runs_on(store, tmp_path, backend, agents=agent_cache, prices=PRICES) as runs:
        live, grant = await going(runs, backend, model="no-such-model")
        await report_call(grant, "priced-model")
        await report_call(grant, "no-such-model-either")
        live.cancel()
        await finished(live)
    assert (live.cost.calls, live.cost.unpriced, live.cost.total) == (2, 1, None)
    record = await store.get_trajectory(live.run_id)
    assert record is not None and record.cost_usd is None


async def test_the_agents_own_cost_is_kept_beside_the_runs(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    backend = ScriptedBackend(lambda _: Script(stdout=CLAUDE))
    async with runs_on(store, tmp_path, backend, agents=agent_cache, prices=PRICES) as runs:
        live = await finished((await runs.start(request())).live)
    assert live.outcome == "completed" and live.usage is not None
    record = await store.get_trajectory(live.run_id)
    assert record is not None and record.usage is not None
    # No model call went through the relay: the run cost nothing the proxy saw.
    assert record.cost_usd == 0.0
    assert record.usage["agent_cost_usd"] == live.usage.cost_usd
    assert live.usage.cost_usd
    assert (record.usage["model_calls"], record.usage["unpriced_model_calls"]) == (0, 0)


async def test_a_spent_budget_refuses_the_next_run(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    backend = hanging()
    limits = quotas(store, budget_usd=0.001)
    async with runs_on(
        store, tmp_path, backend, agents=agent_cache, prices=PRICES, quotas=limits
    ) as runs:
        live, grant = await going(runs, backend)
        await report_call(grant, "priced-model")
        # Over its budget meanwhile, the run goes on: limits never stop a run that started.
        assert not live.done
        live.cancel()
        await finished(live)
        with pytest.raises(QuotaExceeded) as refused:
            await runs.start(request())
    assert refused.value.headers()["x-should-retry"] == "false"
    assert len(backend.sandboxes) == 1
