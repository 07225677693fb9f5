"""``GET …/{id}/events``: replay, resume with Last-Event-ID, live follow, end of stream."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from proxy.store import Store
from tests.support.sse import sse_events
from tests.support.stores import database_url_fixture, fresh_database, live_proxy, with_store

__all__ = ["database_url_fixture"]


def follow_while(url: str, write: Callable[[], None], *, timeout: float) -> list[dict[str, Any]]:
    """The events after seq 1 at ``url``, read while ``write`` runs in a thread (another
    process writing)."""
    with httpx.stream("GET", url, headers={"last-event-id": "1"}, timeout=timeout) as response:
        writer = threading.Thread(target=write)
        writer.start()
        events = sse_events(response)
        writer.join()
    return events


def make_run(database_url: str, events: int, status: str = "running") -> str:
    async def work(store: Store) -> str:
        run = await store.create_trajectory("alpha", "live", status="running")
        for n in range(events):
            await store.append_event(run.id, "text_delta", {"text": f"t{n}"})
        if status != "running":
            await store.update_trajectory(run.id, status=status)  # type: ignore[arg-type]
        return run.id

    return with_store(database_url, work)


def test_replay_then_resume_mid_way(database_url: str, tmp_path: Path) -> None:
    run = make_run(database_url, 10, status="completed")
    with live_proxy(database_url, tmp_path / "data") as proxy:
        url = proxy + f"/api/v1/trajectory/alpha/live/{run}/events"
        with httpx.stream("GET", url) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            everything = sse_events(response)
        assert [e.get("id") for e in everything[:-1]] == [str(n) for n in range(1, 11)]
        first = json.loads(everything[0]["data"])
        assert (
            first["seq"] == 1 and first["type"] == "text_delta" and first["data"] == {"text": "t0"}
        )
        assert everything[-1]["event"] == "end"
        assert json.loads(everything[-1]["data"]) == {"status": "completed"}
        assert "id" not in everything[-1]

        with httpx.stream("GET", url, headers={"last-event-id": "6"}) as response:
            resumed = sse_events(response)
        assert [e["data"] for e in resumed[:-1]] == [e["data"] for e in everything[6:10]]
        assert [e["id"] for e in resumed[:-1]] == ["7", "8", "9", "10"]

        with httpx.stream("GET", url, params={"after": "9"}) as response:
            assert [e.get("id") for e in sse_events(response)] == ["10", None]
        with httpx.stream("GET", url, headers={"last-event-id": "10"}) as response:
            assert [e.get("event") for e in sse_events(response)] == ["end"]
        for bad in ("-1", "x", "1.5"):
            assert httpx.get(url, headers={"last-event-id": bad}).status_code == 400


def test_follows_a_live_run_written_by_another_process(database_url: str, tmp_path: Path) -> None:
    run = make_run(database_url, 2)

    def keep_writing() -> None:
        async def work(store: Store) -> None:
            for n in range(2, 6):
                await anyio.sleep(0.05)
                await store.append_event(run, "text_delta", {"text": f"t{n}"})
            await store.update_trajectory(run, status="completed")

        with_store(database_url, work)

    with live_proxy(database_url, tmp_path / "data") as proxy:
        url = proxy + f"/api/v1/trajectory/alpha/live/{run}/events"
        events = follow_while(url, keep_writing, timeout=20)
    texts = [json.loads(e["data"])["data"]["text"] for e in events[:-1]]
    assert texts == ["t1", "t2", "t3", "t4", "t5"]
    assert [int(e["id"]) for e in events[:-1]] == [2, 3, 4, 5, 6]
    assert json.loads(events[-1]["data"]) == {"status": "completed"}


@pytest.mark.postgres
def test_on_postgres_another_process_wakes_the_stream_without_polling(tmp_path: Path) -> None:
    with fresh_database("postgres", tmp_path) as database_url:
        run = make_run(database_url, 1)

        def write() -> None:
            async def work(store: Store) -> None:
                await store.append_event(run, "text_delta", {"text": "t1"})
                await store.update_trajectory(run, status="completed")

            with_store(database_url, work)

        # It would poll once in ten minutes: only the database's notifications wake it in time.
        with live_proxy(
            database_url, tmp_path / "data", events_poll_seconds=600, keepalive_seconds=60
        ) as proxy:
            url = proxy + f"/api/v1/trajectory/alpha/live/{run}/events"
            events = follow_while(url, write, timeout=30)
    assert [e.get("id") for e in events] == ["2", None]
    assert json.loads(events[-1]["data"]) == {"status": "completed"}


def test_a_stream_with_nothing_new_pings(database_url: str, tmp_path: Path) -> None:
    run = make_run(database_url, 1)
    with live_proxy(database_url, tmp_path / "data", keepalive_seconds=0.2) as proxy:
        url = proxy + f"/api/v1/trajectory/alpha/live/{run}/events"
        with httpx.stream("GET", url, headers={"last-event-id": "1"}, timeout=5) as response:
            lines = response.iter_lines()
            assert next(lines).startswith(":")
