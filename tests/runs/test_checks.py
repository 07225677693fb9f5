"""The checks: every refusal comes before anything of the run exists; a follow-up's run is found."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import InvalidField, NotFound, NotImplementedYet, ProxyError
from proxy.runs.checks import follow_up, plan
from proxy.runs.errors import ProviderNotConfigured, RunInProgress, SandboxUnavailable
from proxy.runs.followup import Continuation, marker_line
from proxy.sandbox import EngineUnavailable, Script, ScriptedBackend
from proxy.store import Store
from tests.support.runs import IMAGE, request, runs_on

pytestmark = pytest.mark.anyio


def _history(run_id: str) -> list[Mapping[str, Any]]:
    return [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": f"Done.{marker_line(run_id, 'u')}"},
        {"role": "user", "content": "more"},
    ]


async def _follow_up(
    store: Store, tmp_path: Path, messages: list[Mapping[str, Any]], **jetty: Any
) -> tuple[Continuation | None, tuple[str, ...], str]:
    """The continuation the follow-up check finds, the plan's warnings and its instruction."""
    async with runs_on(store, tmp_path, ScriptedBackend(lambda _: Script())) as runs:
        draft = await follow_up(await plan(request(messages, **jetty), runs.deps), runs.deps)
    return draft.continuation, draft.plan.warnings, draft.plan.instruction


async def test_continuation_of_a_finished_run(store: Store, tmp_path: Path) -> None:
    first = await store.create_trajectory("acme", "chat", agent="claude-code")
    await store.update_trajectory(
        first.id,
        status="completed",
        session={"conversation": first.id, "turn": 1, "agent_session_id": "s1", "home_blob": "b"},
    )
    continuation, warnings, instruction = await _follow_up(store, tmp_path, _history(first.id))
    assert isinstance(continuation, Continuation)
    assert (continuation.turn, continuation.agent_session_id, continuation.home_blob) == (
        2,
        "s1",
        "b",
    )
    assert continuation.session() == {"conversation": first.id, "turn": 2, "continues": first.id}
    assert instruction == "more"
    assert warnings == ()


@pytest.mark.parametrize(
    ("collection", "agent", "why"),
    [
        ("other", "claude-code", "not a run of collection 'other'"),
        ("acme", "codex", "it ran claude-code, and this turn runs codex"),
    ],
)
async def test_runs_that_cannot_be_continued_start_fresh_with_a_warning(
    store: Store, tmp_path: Path, collection: str, agent: str, why: str
) -> None:
    first = await store.create_trajectory("acme", "chat", agent="claude-code", status="completed")
    continuation, warnings, _ = await _follow_up(
        store, tmp_path, _history(first.id), collection=collection, agent=agent
    )
    assert continuation is None
    assert why in warnings[-1]
    continuation, warnings, _ = await _follow_up(store, tmp_path, _history("0f0f0f0f"))
    assert continuation is None
    assert "not a run of collection 'acme'" in warnings[-1]


class _EngineDown(ScriptedBackend):
    async def check_image(self, image: str) -> None:
        raise EngineUnavailable("no engine answers")


@pytest.mark.parametrize(
    ("backend", "messages", "jetty", "refusal", "param"),
    [
        (None, None, {"files": ["file-nope"]}, NotFound, "jetty.files[0]"),
        (None, None, {"file_paths": ["acme/nope.txt"]}, NotFound, "jetty.file_paths[0]"),
        (None, None, {"snapshot": "python312-uv"}, NotImplementedYet, "jetty.snapshot"),
        (None, None, {"pip_packages": ["six"]}, NotImplementedYet, "jetty.base_image"),
        (None, None, {"image": "not/there:1"}, InvalidField, "jetty.image"),
        (_EngineDown, None, {}, SandboxUnavailable, None),
        (None, None, {"agent": "codex"}, ProviderNotConfigured, "jetty.model_provider"),
        (None, "live", {}, RunInProgress, "messages"),
    ],
)
async def test_every_refusal_comes_before_anything_exists(
    store: Store,
    tmp_path: Path,
    backend: type[ScriptedBackend] | None,
    messages: str | None,
    jetty: dict[str, Any],
    refusal: type[ProxyError],
    param: str | None,
) -> None:
    history: list[Mapping[str, Any]] = []
    if messages == "live":
        live = await store.create_trajectory("acme", "t", agent="claude-code", status="running")
        history = _history(live.id)
    sandboxes = (backend or ScriptedBackend)(lambda _: Script(), images={IMAGE})
    async with runs_on(store, tmp_path, sandboxes) as runs:
        with pytest.raises(refusal) as refused:
            await runs.start(request(history, **jetty))
    assert refused.value.param == param
    assert sandboxes.sandboxes == []
    expected = 1 if messages == "live" else 0
    assert (await store.list_trajectories("acme", "t")).total == expected
    assert not (tmp_path / "agents").exists()  # no agent was installed
