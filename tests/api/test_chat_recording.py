"""Relayed completions are recorded as one-step trajectories, read back over REST."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from proxy.app import create_app
from proxy.settings import Settings
from proxy.store import Store, StoreError
from proxy.store.chat import ChatRecord, record_chat, record_chats
from proxy.store.records import NewTrajectory, Trajectory
from proxy.store.sqlite import SQLiteStore
from tests.api.conftest import ProxyFactory
from tests.support.live import serve
from tests.support.scripted_openai import ScriptedUpstream
from tests.support.stores import create_key, database_url_fixture, make_store

__all__ = ["database_url_fixture"]

Upstream = tuple[ScriptedUpstream, str]
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "hello there general kenobi"}
]
USAGE = {
    "input_tokens": 5,
    "output_tokens": 4,
    "cache_read_tokens": 0,
    "cache_write_tokens": 0,
    "reasoning_tokens": 0,
}


def client(proxy: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy + "/v1", api_key=key, max_retries=0)


def recorded(
    proxy: str,
    collection: str = "default",
    task: str = "_chat",
    *,
    count: int = 1,
    headers: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The trajectories of ``collection``/``task``, newest first, in full, once there are
    ``count``: recording happens after the last byte, so the client can be faster."""
    listing = f"{proxy}/api/v1/db/trajectories/{collection}/{task}"
    deadline = time.monotonic() + 5
    while True:
        response = httpx.get(listing, headers=headers)
        assert response.status_code == 200, response.text
        items = response.json()["trajectories"]
        if len(items) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(items) == count, items
    return [
        httpx.get(
            f"{proxy}/api/v1/db/trajectory/{collection}/{task}/{item['trajectory_id']}",
            headers=headers,
        ).json()
        for item in items
    ]


def test_a_stream_is_recorded_without_its_content(proxy: str) -> None:
    stream = client(proxy).chat.completions.create(
        model="echo", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    (record,) = recorded(proxy)
    assert record["status"] == "completed" and record["error"] is None
    assert record["kind"] == "chat" and record["task"] == "_chat"
    assert record["model"] == "echo"
    assert record["usage"] == USAGE
    assert record["started"] is not None and record["ended"] is not None
    step = record["steps"]["chat"]
    assert step["inputs"] == {"model": "echo", "stream": True}
    outputs = step["outputs"]
    assert outputs["upstream_id"] == "chatcmpl-scripted"
    assert outputs["model"] == "echo"
    assert outputs["finish_reason"] == "stop"
    assert outputs["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    assert outputs["status_code"] == 200
    assert 0 < outputs["first_byte_seconds"] <= step["duration_seconds"]
    assert "content" not in outputs


def test_a_client_that_hangs_up_after_the_last_event_got_a_whole_answer(proxy: str) -> None:
    """A client may stop at ``data: [DONE]`` and close before the response's own end (here
    the upstream lingers after it): the answer was whole, so the record says completed."""
    body = {"model": "linger-5", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", proxy + "/v1/chat/completions", json=body) as response:
        lines = []
        for line in response.iter_lines():
            lines.append(line)
            if line == "data: [DONE]":
                break
    assert "data: [DONE]" in lines
    (record,) = recorded(proxy)
    assert record["status"] == "completed" and record["error"] is None
    # A client that hangs up before the last event did not get the answer.
    hang = {"model": "hang-after-first", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", proxy + "/v1/chat/completions", json=hang) as response:
        next(response.iter_lines())
    cancelled, _ = recorded(proxy, count=2)
    assert cancelled["status"] == "cancelled"


def test_content_is_kept_when_configured(make_proxy: ProxyFactory) -> None:
    with make_proxy(record_chat_content=True) as proxy:
        stream = client(proxy).chat.completions.create(model="echo", messages=MESSAGES, stream=True)
        assert len(list(stream)) > 1
        (streamed,) = recorded(proxy)
        client(proxy).chat.completions.create(model="echo", messages=MESSAGES)
        plain, _ = recorded(proxy, count=2)
    for record, stream_flag in ((streamed, True), (plain, False)):
        step = record["steps"]["chat"]
        assert step["inputs"] == {"model": "echo", "stream": stream_flag, "messages": MESSAGES}
        assert step["outputs"]["content"] == "hello there general kenobi"
    # Without include_usage a stream reports none; the plain answer always does.
    assert streamed["usage"] is None
    assert plain["usage"] == {**USAGE, "output_tokens": 3}


def test_jetty_collection_and_task_choose_where(proxy: str, upstream: Upstream) -> None:
    response = httpx.post(
        proxy + "/v1/chat/completions",
        json={
            "model": "echo",
            "messages": MESSAGES,
            "jetty": {"collection": "support", "task": "triage"},
        },
    )
    assert response.status_code == 200
    assert "jetty" not in upstream[0].seen[-1].json
    (record,) = recorded(proxy, "support", "triage")
    assert record["init_params"] == {"collection": "support", "task": "triage"}
    assert record["steps"]["chat"]["outputs"]["finish_reason"] == "stop"
    assert httpx.get(proxy + "/api/v1/db/trajectories/default/_chat").json()["total"] == 0


@pytest.mark.parametrize("task", ["", "a/b", ".hidden", 7])
def test_a_bad_task_is_refused(proxy: str, upstream: Upstream, task: object) -> None:
    response = httpx.post(
        proxy + "/v1/chat/completions",
        json={"model": "echo", "messages": MESSAGES, "jetty": {"task": task}},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "jetty.task"
    assert upstream[0].seen == []


def test_a_failure_mid_stream_is_recorded_as_failed(proxy: str) -> None:
    with httpx.stream(
        "POST",
        proxy + "/v1/chat/completions",
        json={"model": "break-after-2", "messages": MESSAGES, "stream": True},
    ) as response:
        body = response.read().decode()
    assert body.rstrip().endswith("data: [DONE]")

    (record,) = recorded(proxy)
    assert record["status"] == "failed"
    assert "mid-response" in record["error"]
    outputs = record["steps"]["chat"]["outputs"]
    assert outputs["upstream_id"] == "chatcmpl-scripted"
    assert outputs["finish_reason"] is None
    assert outputs["status_code"] == 200  # the stream had started


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_error_is_recorded_as_failed(proxy: str, stream: bool) -> None:
    response = httpx.post(
        proxy + "/v1/chat/completions",
        json={"model": "error-429", "messages": MESSAGES, "stream": stream},
    )
    assert response.status_code == 429

    (record,) = recorded(proxy)
    assert record["status"] == "failed"
    assert record["error"] == "scripted 429"
    assert record["steps"]["chat"]["outputs"]["status_code"] == 429


def test_a_client_that_goes_away_is_recorded_as_cancelled(proxy: str) -> None:
    with httpx.stream(
        "POST",
        proxy + "/v1/chat/completions",
        json={"model": "hang-after-first", "messages": MESSAGES, "stream": True},
    ) as response:
        first = next(response.iter_lines())
    assert first.startswith("data:")

    (record,) = recorded(proxy)
    assert record["status"] == "cancelled"
    assert record["steps"]["chat"]["outputs"]["upstream_id"] == "chatcmpl-scripted"


def test_keys_see_only_their_collections(make_proxy: ProxyFactory, tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'data' / 'jetty-proxy.db'}"
    alpha_key, beta_key = create_key(database_url, "alpha"), create_key(database_url, "beta")
    alpha = {"Authorization": f"Bearer {alpha_key}"}
    beta = {"Authorization": f"Bearer {beta_key}"}
    with make_proxy() as proxy:
        client(proxy, alpha_key).chat.completions.create(model="echo", messages=MESSAGES)
        # The key's first collection is where its calls go.
        (record,) = recorded(proxy, "alpha", headers=alpha)
        assert record["collection"] == "alpha"

        listing = f"{proxy}/api/v1/db/trajectories/alpha/_chat"
        assert httpx.get(listing, headers=beta).status_code == 404
        one = f"{proxy}/api/v1/db/trajectory/alpha/_chat/{record['trajectory_id']}"
        assert httpx.get(one, headers=beta).status_code == 404
        refused = httpx.post(
            proxy + "/v1/chat/completions",
            headers=beta,
            json={"model": "echo", "messages": MESSAGES, "jetty": {"collection": "alpha"}},
        )
        assert refused.status_code == 404
        assert httpx.get(listing, headers=alpha).json()["total"] == 1


class _BrokenStore(SQLiteStore):
    """Records nothing: every new trajectory fails."""

    async def create_trajectory(self, *args: Any, **kwargs: Any) -> Trajectory:
        raise StoreError("the disk is full")

    async def add_trajectories(self, items: Sequence[NewTrajectory]) -> None:
        raise StoreError("the disk is full")


def test_a_failed_recording_never_reaches_the_client(
    tmp_path: Path, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    store: Store = _BrokenStore(tmp_path / "data" / "jetty-proxy.db")
    settings = Settings(
        data_dir=tmp_path / "data", upstream_url=upstream[1], backend="local", auth_cache_seconds=0
    )
    with (
        caplog.at_level(logging.ERROR, "proxy.api"),
        serve(create_app(settings, store=store)) as proxy,
    ):
        response = httpx.post(
            proxy + "/v1/chat/completions",
            json={"model": "echo", "messages": MESSAGES, "stream": True},
        )
        assert response.status_code == 200
        events = [line for line in response.text.splitlines() if line.startswith("data:")]
        assert events[-1] == "data: [DONE]"
        assert all("error" not in json.loads(e[5:]) for e in events[:-1])
        deadline = time.monotonic() + 5
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.02)
    assert "recording a relayed completion failed" in caplog.text
    assert "the disk is full" in caplog.text


def test_a_burst_of_completions_is_all_recorded(proxy: str) -> None:
    def complete(_: int) -> None:
        response = httpx.post(
            proxy + "/v1/chat/completions",
            json={"model": "echo", "messages": MESSAGES, "stream": True},
        )
        assert response.status_code == 200

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(complete, range(40)))
    deadline = time.monotonic() + 5
    listing = f"{proxy}/api/v1/db/trajectories/default/_chat"
    while httpx.get(listing).json()["total"] < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(listing).json()["total"] == 40


def test_a_batch_is_stored_as_one_by_one(database_url: str) -> None:
    """record_chats stores a batch with add_trajectories: the rows must read back as
    record_chat's (through create_trajectory) do, secrets redacted alike."""
    record = ChatRecord(
        collection="alpha",
        task="support",
        model="gpt-4o",
        status="failed",
        duration_seconds=0.75,
        stream=True,
        upstream_id="chatcmpl-1",
        upstream_model="gpt-4o-2024-08-06",
        finish_reason="stop",
        usage={"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        first_byte_seconds=0.25,
        status_code=200,
        error="upstream said sk-hidden-value",
        messages=[{"role": "user", "content": "my key is sk-hidden-value"}],
        content="hello",
        keep_content=True,
        jetty={"collection": "alpha", "task": "support", "api_key": "anything"},
        ended=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        cost_usd=0.0125,
        key_id="k1",
    )
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    del fields["ended"]

    async def work() -> tuple[Trajectory, list[Trajectory]]:
        store = make_store(database_url)
        try:
            await store.migrate()
            await store.update_environment("alpha", secrets={"KEY": "sk-hidden-value"})
            one = await record_chat(store, **fields)
            ended = one.finished_at or record.ended
            await record_chats(store, [dataclasses.replace(record, ended=ended)] * 3)
            page = await store.list_trajectories("alpha", "support")
            return one, [t for t in page.items if t.id != one.id]
        finally:
            await store.close()

    one, batch = anyio.run(work)
    assert len(batch) == 3 and len({t.id for t in batch}) == 3
    assert "sk-hidden-value" not in repr(one)
    assert (one.cost_usd, one.key_id) == (0.0125, "k1")
    for trajectory in batch:
        assert (
            dataclasses.replace(
                trajectory, id=one.id, created_at=one.created_at, updated_at=one.updated_at
            )
            == one
        )
