"""Trajectories on every engine: ids, updates, status transitions, listings, labels."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from proxy.store import RecordNotFound, Step, Store
from proxy.store.chat import record_chat
from proxy.store.records import NewTrajectory

pytestmark = pytest.mark.anyio


async def test_create_and_get(store: Store) -> None:
    created = await store.create_trajectory(
        "alpha",
        "nightly",
        model="claude-sonnet-4",
        agent="claude-code",
        jetty={"runbook": True, "collection": "alpha", "task": "nightly"},
    )
    assert re.fullmatch(r"[0-9a-f]{8}", created.id)
    assert created.status == "pending"
    assert created.kind == "run"
    assert created.last_seq == 0
    assert created.created_at.tzinfo is UTC
    fetched = await store.get_trajectory(created.id)
    assert fetched == created
    assert fetched.jetty["task"] == "nightly"
    assert await store.get_trajectory("00000000") is None


async def test_ids_are_unique(store: Store) -> None:
    ids = {(await store.create_trajectory("alpha", "t")).id for _ in range(50)}
    assert len(ids) == 50


async def test_update_sets_only_what_is_given(store: Store) -> None:
    run = await store.create_trajectory("alpha", "t", model="m1")
    started = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    running = await store.update_trajectory(
        run.id,
        status="running",
        started_at=started,
        environment={"image": "ghcr.io/x/y:1", "digest": "sha256:abc"},
        steps={"setup": Step(inputs={"cpus": 2}, outputs={"ok": True})},
    )
    assert running.status == "running"
    assert running.started_at == started
    assert running.model == "m1"
    assert running.environment["digest"] == "sha256:abc"
    done = await store.update_trajectory(
        run.id,
        status="completed",
        usage={"input_tokens": 10, "output_tokens": 5},
        cost_usd=0.25,
        finished_at=datetime.now(UTC),
        steps={"agent": Step(outputs={"result": "done"}, duration_seconds=1.5)},
    )
    assert set(done.steps) == {"setup", "agent"}
    assert done.steps["setup"].inputs == {"cpus": 2}
    assert done.steps["agent"].duration_seconds == 1.5
    assert done.usage == {"input_tokens": 10, "output_tokens": 5}
    assert done.cost_usd == 0.25
    assert done.started_at == started
    assert done.is_final
    assert await store.get_trajectory(run.id) == done
    with pytest.raises(RecordNotFound):
        await store.update_trajectory("ffffffff", status="failed")


async def test_transition_is_compare_and_set(store: Store) -> None:
    run = await store.create_trajectory("alpha", "t")
    cancelled = await store.transition(run.id, "cancelled", allowed_from=["pending", "running"])
    assert cancelled is not None and cancelled.status == "cancelled"
    assert await store.transition(run.id, "cancelled", allowed_from=["pending", "running"]) is None
    archived = await store.transition(run.id, "archived", allowed_from=["cancelled"])
    assert archived is not None and archived.status == "archived"
    assert await store.transition("ffffffff", "cancelled", allowed_from=["pending"]) is None


async def test_list_pages_newest_first_and_filters(store: Store) -> None:
    ids = [(await store.create_trajectory("alpha", "t")).id for _ in range(5)]
    await store.create_trajectory("alpha", "other")
    await store.create_trajectory("beta", "t")
    await store.update_trajectory(ids[1], status="failed")

    first = await store.list_trajectories("alpha", "t", limit=2)
    assert first.total == 5
    assert [t.id for t in first.items] == ids[::-1][:2]
    second = await store.list_trajectories("alpha", "t", limit=2, offset=2)
    assert [t.id for t in second.items] == ids[::-1][2:4]
    failed = await store.list_trajectories("alpha", "t", status="failed")
    assert [t.id for t in failed.items] == [ids[1]] and failed.total == 1
    everything = await store.list_trajectories("alpha")
    assert everything.total == 6
    assert (await store.list_trajectories("gamma", "t")).total == 0


async def test_labels_upsert(store: Store) -> None:
    run = await store.create_trajectory("alpha", "t")
    await store.set_label(run.id, "quality", "good", "ann")
    await store.set_label(run.id, "owner", "bob", None)
    await store.set_label(run.id, "quality", "great", "ben")
    labels = await store.list_labels(run.id)
    assert [(label.key, label.value, label.author) for label in labels] == [
        ("owner", "bob", None),
        ("quality", "great", "ben"),
    ]
    with pytest.raises(RecordNotFound):
        await store.set_label("ffffffff", "k", "v", None)


async def test_record_chat_is_one_step(store: Store) -> None:
    recorded = await record_chat(
        store,
        collection="alpha",
        model="gpt-4o",
        status="completed",
        duration_seconds=0.75,
        stream=True,
        upstream_id="chatcmpl-1",
        upstream_model="gpt-4o-2024-08-06",
        finish_reason="stop",
        usage={"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        messages=[{"role": "user", "content": "hi"}],
        content="hello",
    )
    assert recorded.task == "_chat"
    assert recorded.kind == "chat"
    assert recorded.status == "completed"
    assert recorded.usage == {
        "input_tokens": 7,
        "output_tokens": 3,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
    }
    step = recorded.steps["chat"]
    assert step.outputs["upstream_id"] == "chatcmpl-1"
    assert step.outputs["finish_reason"] == "stop"
    assert step.duration_seconds == 0.75
    # Content is only kept when the configuration says so.
    assert "messages" not in step.inputs and "content" not in step.outputs

    kept = await record_chat(
        store,
        collection="alpha",
        task="support",
        model="gpt-4o",
        status="failed",
        duration_seconds=0.1,
        error="upstream returned HTTP 500",
        messages=[{"role": "user", "content": "hi"}],
        content="partial",
        keep_content=True,
    )
    assert kept.task == "support" and kept.error == "upstream returned HTTP 500"
    assert kept.steps["chat"].inputs["messages"] == [{"role": "user", "content": "hi"}]
    assert kept.steps["chat"].outputs["content"] == "partial"
    assert await store.get_trajectory(kept.id) == kept


async def test_session_is_stored_and_updated(store: Store) -> None:
    first = await store.create_trajectory("acme", "chat")
    assert first.session is None
    second = await store.create_trajectory(
        "acme", "chat", session={"conversation": first.id, "turn": 2, "continues": first.id}
    )
    assert second.session == {"conversation": first.id, "turn": 2, "continues": first.id}
    saved = {**second.session, "agent_session_id": "s-1", "home_blob": "ab" * 16}
    updated = await store.update_trajectory(second.id, status="completed", session=saved)
    assert updated.session == saved
    again = await store.get_trajectory(second.id)
    assert again is not None and again.session == saved
    # Leaving it out of an update keeps it.
    kept = await store.update_trajectory(second.id, error="x")
    assert kept.session == saved


async def test_add_trajectories_in_bulk(store: Store) -> None:
    await store.update_environment("acme", secrets={"TOKEN": "s3cr3t-value"})
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    items = [
        NewTrajectory(
            "acme",
            "_chat",
            kind="chat",
            status="completed",
            model="gpt-4o",
            jetty={"note": "uses s3cr3t-value"},
            steps={"chat": Step(inputs={"n": n})},
            usage={"input_tokens": n},
            error="leaked s3cr3t-value" if n == 2 else None,
            started_at=started,
            finished_at=started,
            session={"turn": n},
        )
        for n in range(3)
    ]
    await store.add_trajectories(items)
    await store.add_trajectories([])
    page = await store.list_trajectories("acme", "_chat")
    assert page.total == 3
    stored = sorted(page.items, key=lambda t: t.steps["chat"].inputs["n"])
    assert [t.usage for t in stored] == [{"input_tokens": n} for n in range(3)]
    assert [t.session for t in stored] == [{"turn": n} for n in range(3)]
    assert stored[0].kind == "chat" and stored[0].started_at == started
    assert "s3cr3t-value" not in str(stored[0].jetty)
    assert stored[2].error is not None and "s3cr3t-value" not in stored[2].error
    assert len({t.id for t in stored}) == 3
