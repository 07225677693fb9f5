"""The run lifecycle on the scripted sandbox backend: each run from request to end, in memory.

Real parts around the sandbox: the store (SQLite), blobs, run tokens, the engine, the agent
cache (Claude Code installed by the real installer from a fake npm) and Claude Code's real
translator, fed the recorded output of the real CLI.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import anyio
import pytest

from proxy.agents import get_adapter
from proxy.agents.install import AgentCache
from proxy.events import Progress
from proxy.jetty import PlanDefaults
from proxy.runs.launch import AGENT_HOME, SANDBOX_OF, SERVER
from proxy.runs.live import LiveRun
from proxy.runs.service import StartedRun
from proxy.sandbox import Capabilities, Script, ScriptedBackend, ScriptedSandbox
from proxy.store import Store
from proxy.store.blobs import read_all
from tests.agents.replay import STREAMS
from tests.support.fake_npm import write_fake_npm
from tests.support.leftovers import INTERRUPTED
from tests.support.runs import (
    CLAUDE,
    IMAGE,
    SESSION,
    SESSION_FILE,
    answer_of,
    continuing,
    finished,
    request,
    runs_on,
    started_agent,
    status_of,
)

pytestmark = pytest.mark.anyio

CLAUDE_401 = (STREAMS / "claude-code" / "claude_err401.jsonl").read_text().splitlines()


async def two_turns(
    store: Store, tmp_path: Path, backend: ScriptedBackend, agents: AgentCache
) -> tuple[StartedRun, LiveRun]:
    """A run, then the conversation's next turn once it ended; the first, and the second done."""
    async with runs_on(store, tmp_path, backend, agents=agents) as runs:
        first = await runs.start(request())
        await finished(first.live)
        second = await finished((await runs.start(request(continuing(first)))).live)
    assert second.outcome == "completed", second.error
    return first, second


async def test_a_run_keeps_its_results_and_waits_in_its_sandbox_for_the_next_turn(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    results = {"/app/results/hello.txt": b"hello", "/app/results/sub/data.csv": b"a,b\n"}
    backend = ScriptedBackend(lambda _: Script(stdout=CLAUDE, files=results))
    async with runs_on(store, tmp_path, backend, agents=agent_cache) as runs:
        started = await runs.start(request())
        live = await finished(started.live)
        assert (live.outcome, live.error) == ("completed", None)
        assert started.model == "claude-sonnet-4-6"
        [sandbox] = backend.sandboxes
        assert not sandbox.closed and live.run_id in runs.deps.kept
        assert not runs.deps.tokens.is_live(live.run_id)

    assert [a["path"] for a in live.artifacts] == ["hello.txt", "sub/data.csv"]
    # Links in the answer are signed (they open in a browser without a key): the result
    # files under the run's signed base, the run line at its page.
    assert re.match(
        r"http://proxy\.test/s/[^/]+/api/v1/trajectory/acme/t/", live.artifacts[0]["url"]
    )
    run_line = (
        rf"Jetty run \[{live.run_id}\]\(http://proxy\.test/s/[^/]+/runs/acme/t/{live.run_id}\)"
    )
    assert re.search(run_line, answer_of(live))
    stored = await store.list_artifacts(live.run_id)
    assert [await read_all(runs.deps.blobs, a.blob_key) for a in stored] == [b"hello", b"a,b\n"]
    record = await store.get_trajectory(live.run_id)
    assert record is not None
    assert (record.status, record.error, record.agent) == ("completed", None, "claude-code")
    assert record.environment == {"image": IMAGE, "backend": "scripted", SERVER: "server"}
    assert record.usage is not None and record.usage["input_tokens"] > 0
    assert record.session is not None and record.session["agent_session_id"] == SESSION
    # The run's own files were copied in before the start (this backend takes none inline).
    metadata = json.loads(sandbox.files["/app/trajectory.json"])
    assert (metadata["trajectory_id"], metadata["task"]) == (live.run_id, "t")
    assert sandbox.spec.image == IMAGE
    assert sandbox.spec.network_enabled is False


async def test_small_files_go_inline_where_the_backend_takes_them(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    inline = Capabilities(runs_images=True, inline_files=True, mounts_host=True)
    backend = ScriptedBackend(lambda _: Script(stdout=CLAUDE), capabilities=inline)
    async with runs_on(store, tmp_path, backend, agents=agent_cache) as runs:
        live = await finished((await runs.start(request())).live)
        [sandbox] = backend.sandboxes
        # A backend that cannot rerun a sandbox keeps none for the next turn.
        assert sandbox.closed and live.run_id not in runs.deps.kept
    assert live.outcome == "completed"
    assert "/app/trajectory.json" not in sandbox.files
    assert "> /app/trajectory.json" in sandbox.spec.argv[2]


async def test_a_failed_agent_keeps_what_it_wrote(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    partial = {"/app/results/partial.txt": b"half"}
    script = Script(stdout=CLAUDE_401, exit_code=1, files=partial, stderr="boom")
    backend = ScriptedBackend(lambda _: script)
    async with runs_on(store, tmp_path, backend, agents=agent_cache) as runs:
        live = await finished((await runs.start(request())).live)
    assert (live.outcome, live.error_code) == ("failed", "api_error")
    assert live.error is not None and "HTTP 401" in live.error
    assert [a["path"] for a in live.artifacts] == ["partial.txt"]
    assert [a.path for a in await store.list_artifacts(live.run_id)] == ["partial.txt"]
    assert await status_of(store, live.run_id) == ("failed", live.error)


async def test_a_run_past_its_time_is_stopped_and_keeps_what_it_wrote(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    script = Script(stdout=CLAUDE[:1], files={"/app/results/early.txt": b"e"}, hang=True)
    backend = ScriptedBackend(lambda _: script)
    quick = PlanDefaults(image=IMAGE, timeout_sec=0.2)
    async with runs_on(store, tmp_path, backend, agents=agent_cache, defaults=quick) as runs:
        live = await finished((await runs.start(request())).live)
    assert (live.outcome, live.error_code) == ("failed", "timeout")
    assert live.error == "The run timed out after 0.2 s and was stopped."
    assert backend.sandboxes[0].killed
    assert [a["path"] for a in live.artifacts] == ["early.txt"]


async def test_a_cancelled_run_is_stopped_its_sandbox_removed_and_its_results_kept(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    script = Script(stdout=CLAUDE[:1], files={"/app/results/so-far.txt": b"s"}, hang=True)
    backend = ScriptedBackend(lambda _: script)
    async with runs_on(store, tmp_path, backend, agents=agent_cache) as runs:
        live = (await runs.start(request())).live
        await started_agent(live)
        assert runs.live(live.run_id) is live
        live.cancel()
        await finished(live)
        assert runs.live(live.run_id) is None
    assert live.outcome == "cancelled"
    [sandbox] = backend.sandboxes
    assert sandbox.killed and sandbox.closed
    assert [a.path for a in await store.list_artifacts(live.run_id)] == ["so-far.txt"]
    assert await status_of(store, live.run_id) == ("cancelled", "cancelled before it finished")


async def test_a_cancel_before_the_run_began_stops_it_at_once(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    backend = ScriptedBackend(lambda _: Script(stdout=CLAUDE))
    async with runs_on(store, tmp_path, backend, agents=agent_cache) as runs:
        live = (await runs.start(request())).live
        live.cancel()  # before the engine's task ran at all
        await finished(live)
    assert live.outcome == "cancelled"
    assert all(sandbox.closed and not sandbox.scripts for sandbox in backend.sandboxes)


async def test_a_detached_run_goes_on_without_anyone_following(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    backend = ScriptedBackend(lambda _: Script(stdout=CLAUDE))
    async with runs_on(store, tmp_path, backend, agents=agent_cache) as runs:
        started = await runs.start(request(detach=True))
        assert started.live.detached
        with anyio.move_on_after(0):  # a follower that goes away at once
            await finished(started.live)
        # Nobody follows; the run ends on its own, and a later follower sees all of it.
        live = await finished(started.live)
    assert live.outcome == "completed"


async def test_a_follow_up_continues_in_the_kept_sandbox(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    turns: list[ScriptedSandbox] = []

    def agent(sandbox: ScriptedSandbox) -> Script:
        turns.append(sandbox)
        if len(turns) == 1:
            return Script(stdout=CLAUDE, files={"/app/scratch": b"kept"})
        assert sandbox.files["/app/scratch"] == b"kept"  # the same file system
        return Script(stdout=CLAUDE, files={"/app/results/second.txt": b"2"})

    backend = ScriptedBackend(agent)
    first, live = await two_turns(store, tmp_path, backend, agent_cache)
    assert len(backend.sandboxes) == 1 and len(turns) == 2
    argv = list(backend.sandboxes[0].spec.argv)
    assert argv[argv.index("--resume") + 1] == SESSION
    progress = [e.text for e in live.events if isinstance(e, Progress)]
    assert f"Continuing run {first.trajectory_id} (turn 2) in its sandbox" in progress[0]
    record = await store.get_trajectory(live.run_id)
    assert record is not None
    assert record.environment[SANDBOX_OF] == first.trajectory_id
    assert record.environment[SERVER] == "server"
    assert record.session is not None and record.session["turn"] == 2


async def test_a_follow_up_without_its_sandbox_is_restored_into_a_new_one(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    seen: list[Mapping[str, bytes]] = []

    def agent(sandbox: ScriptedSandbox) -> Script:
        seen.append(dict(sandbox.files))
        if len(seen) == 1:
            session = {SESSION_FILE: b'{"turn":1}\n', f"{AGENT_HOME}/.cache/big": b"x"}
            return Script(stdout=CLAUDE, files={**session, "/app/results/one.txt": b"1"})
        return Script(stdout=CLAUDE)

    # A backend that cannot rerun a sandbox: each turn gets a new one.
    backend = ScriptedBackend(agent, capabilities=Capabilities(runs_images=True, mounts_host=True))
    _, live = await two_turns(store, tmp_path, backend, agent_cache)
    assert [sandbox.closed for sandbox in backend.sandboxes] == [True, True]
    restored = seen[1]
    assert restored[SESSION_FILE] == b'{"turn":1}\n'
    assert f"{AGENT_HOME}/.cache/big" not in restored  # caches are not saved
    assert restored["/app/results/one.txt"] == b"1"
    argv = list(backend.sandboxes[1].spec.argv)
    assert argv[argv.index("--resume") + 1] == SESSION
    progress = [e.text for e in live.events if isinstance(e, Progress)]
    assert any("in a new sandbox; restored: agent session, 1 result files" in p for p in progress)


async def test_a_follow_up_in_a_kept_sandbox_is_recovered_when_its_server_dies(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    def agent(sandbox: ScriptedSandbox) -> Script:
        if sandbox.scripts:  # the follow-up turn, still running when its server dies
            return Script(stdout=CLAUDE[:1], hang=True)
        return Script(stdout=CLAUDE)

    backend = ScriptedBackend(agent)
    async with runs_on(store, tmp_path, backend, agents=agent_cache, server_id="crashes") as runs:
        first = await runs.start(request())
        await finished(first.live)
        follow_up = (await runs.start(request(continuing(first)))).live
        await started_agent(follow_up)
        assert len(backend.sandboxes) == 1  # the turn runs in the kept sandbox
        # Another server, on another engine: it cannot see the sandbox, only the record.
        async with runs_on(store, tmp_path / "other", ScriptedBackend(agent)) as other:
            await other.engine.recover()
        record = await store.get_trajectory(follow_up.run_id)
        assert record is not None and record.environment[SANDBOX_OF] == first.trajectory_id
        assert await status_of(store, record.id) == INTERRUPTED


async def test_a_server_that_stopped_beating_has_its_runs_failed_and_sandboxes_removed(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    backend = ScriptedBackend(lambda _: Script(stdout=CLAUDE[:1], hang=True))
    async with runs_on(store, tmp_path, backend, agents=agent_cache, server_id="silent") as runs:
        live = (await runs.start(request())).live
        await started_agent(live)
        # A server sharing the engine and the database, which never heard "silent" beat.
        async with runs_on(store, tmp_path / "other", backend, server_id="alive") as other:
            assert await other.engine.recover() == [live.run_id]
        await finished(live)
    assert backend.sandboxes[0].closed
    assert live.outcome == "failed"
    assert (await status_of(store, live.run_id))[0] == "failed"


async def test_an_agents_first_run_installs_it_in_the_stream(store: Store, tmp_path: Path) -> None:
    agents = AgentCache(tmp_path / "agents", npm=str(write_fake_npm(tmp_path)))
    backend = ScriptedBackend(lambda _: Script(stdout=CLAUDE))
    async with runs_on(store, tmp_path, backend, agents=agents) as runs:
        live = await finished((await runs.start(request())).live)
    assert live.outcome == "completed", live.error
    first = live.events[0]
    assert isinstance(first, Progress) and first.text.startswith("Installing claude-code")
    assert agents.status(get_adapter("claude-code")).installed
