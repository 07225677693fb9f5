"""Two servers, one service: what a client starts through one server, it follows, downloads,
cancels and continues through the other, and a server that dies has its runs failed by the
one left.

Real parts: two ``jetty-proxy serve`` processes, each with its own data directory (as on two
machines: each judges the other by its heartbeats alone) on one PostgreSQL database (a fresh
schema), one S3 endpoint (moto) and one Docker engine; the pinned Claude Code CLI and a
scripted Anthropic server. The servers never call each other: all they share goes through
the database and the bucket. Both poll their event logs once in ten minutes, so a follower
on one learns of the other's events only through the database's notifications.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest

from proxy.runs.runtime import sandbox_owner
from proxy.sandbox import DockerBackend, Orphans
from proxy.settings import Settings
from tests.e2e.conftest import PROVIDER_KEY, TEST_IMAGE, managed_containers, trajectory
from tests.support.blobs import s3_bucket
from tests.support.live import ServeProcess, serve_process
from tests.support.openapi import validate_sse_chunks
from tests.support.scripted_anthropic import ScriptedAnthropic
from tests.support.sse import server_sent_events, sse_events
from tests.support.stores import TEST_SECRET_KEY, fresh_database

pytestmark = [pytest.mark.docker, pytest.mark.agents, pytest.mark.postgres, pytest.mark.s3]

#: The servers' heartbeat windows, shortened: beat every HEARTBEAT s, gone after STALE s
#: without one, the others look every SWEEP s. A dead server's live runs are failed within
#: STALE + SWEEP + HEARTBEAT (the README's window), plus the sweep's own work (removing the
#: dead server's containers first), allowed for in SWEEP_WORK.
HEARTBEAT, STALE, SWEEP = 0.5, 5.0, 1.0
SWEEP_WORK = 3.0
#: How long a reader of an events stream waits for its next line.
EVENTS_READ = 30.0
INPUT = os.urandom(3 * 1024 * 1024 + 17)
TURNS = [
    (
        "cp /app/assets/input.bin /app/results/copy.bin && echo first > /app/results/notes.txt",
        "Copied the input and started the notes.",
    ),
    ("echo second >> /app/results/notes.txt", "Added a line to the notes."),
]
RUNBOOK = "# Notes\n\nDo what the user asks with the input file."
FIRST = [{"role": "user", "content": "Copy the input."}]
RUN_PATH = "/api/v1/trajectory/acme/chat"


def _body(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-6",
        "stream": True,
        "messages": [{"role": "system", "content": RUNBOOK}, *messages],
        "jetty": {
            "runbook": True,
            "collection": "acme",
            "task": "chat",
            "image": TEST_IMAGE,
            "timeout_sec": 120,
            "file_paths": ["acme/inputs/input.bin"],
        },
    }


@dataclass
class Chat:
    """A streaming chat request read in a thread of its own: its run id once its headers
    came, its chunks as they come."""

    url: str
    body: dict[str, Any]
    started: threading.Event = field(default_factory=threading.Event)
    run_id: str = ""
    data: list[str] = field(default_factory=list)
    error: Exception | None = None
    thread: threading.Thread | None = None

    def start(self) -> Chat:
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        assert self.started.wait(120), f"no response: {self.error}"
        return self

    def end(self) -> str:
        """Wait for the stream's end; the answer as a chat UI shows it."""
        assert self.thread is not None
        self.thread.join(180)
        assert not self.thread.is_alive() and self.data[-1] == "[DONE]", self.error
        chunks = validate_sse_chunks("".join(f"data: {d}\n\n" for d in self.data))
        return "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )

    def _read(self) -> None:
        try:
            with httpx.stream(
                "POST", self.url + "/v1/chat/completions", json=self.body, timeout=180
            ) as response:
                assert response.status_code == 200, response.read()
                self.run_id = response.headers["x-jetty-trajectory-id"]
                self.started.set()
                self.data += [
                    line[5:].strip() for line in response.iter_lines() if line.startswith("data:")
                ]
        except Exception as exc:  # the server may be killed under it: the test checks
            self.error = exc
            self.started.set()


def _wait_for(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.05)


def _containers_of(docker_host: str, run_id: str) -> list[dict[str, Any]]:
    return [
        c
        for c in managed_containers(docker_host)
        if c["Labels"].get("jetty-proxy.run-id") == run_id
    ]


def _record(server: ServeProcess, run_id: str) -> dict[str, Any]:
    return trajectory(server.url, "acme", "chat", run_id)


@contextmanager
def _replica(name: str, tmp_path: Path, env: dict[str, str]) -> Iterator[ServeProcess]:
    with serve_process(env={**env, "JETTY_PROXY_DATA_DIR": str(tmp_path / name)}) as served:
        try:
            yield served
        finally:
            # Shown when the test fails: what each server said.
            print(f"--- server {name} ---\n{served.printed()}")


@contextmanager
def _removing_leftovers_on_failure(docker_host: str, owner: str) -> Iterator[None]:
    """A failed test may leave a killed server's sandboxes nobody sweeps: this test's own
    (``owner`` is its database's), removed once it has failed."""
    try:
        yield
    except BaseException:

        async def remove() -> None:
            backend = DockerBackend.from_url(docker_host)
            try:
                await backend.remove_orphans(Orphans(owner=owner))
            finally:
                await backend.aclose()

        anyio.run(remove)
        raise


def test_two_servers_on_one_database_and_bucket_are_one_service(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    anthropic: tuple[ScriptedAnthropic, str],
    docker_host: str,
    agent_cache: Path,
    no_leftover_containers: set[str],
) -> None:
    scripted, anthropic_url = anthropic
    scripted.turns = TURNS
    gate = threading.Event()
    scripted.gate = gate
    with fresh_database("postgres", tmp_path) as database_url, s3_bucket(monkeypatch) as bucket:
        # What replicas must share: the database, the secret key, the bucket (and here, the
        # engine and agent CLIs); each has its own data directory.
        env = {
            "JETTY_PROXY_DATABASE_URL": database_url,
            "JETTY_PROXY_SECRET_KEY": TEST_SECRET_KEY,
            "JETTY_PROXY_BLOB_URL": bucket.url,
            "JETTY_PROXY_BACKEND": "docker",
            "JETTY_PROXY_DOCKER_HOST": docker_host,
            "JETTY_PROXY_AGENT_CACHE_DIR": str(agent_cache),
            "JETTY_PROXY_UPSTREAM_URL": "http://127.0.0.1:9/v1",
            "JETTY_PROXY_ANTHROPIC_BASE_URL": anthropic_url,
            "JETTY_PROXY_ANTHROPIC_API_KEY": PROVIDER_KEY,
            "JETTY_PROXY_HEARTBEAT_SECONDS": str(HEARTBEAT),
            "JETTY_PROXY_SERVER_STALE_SECONDS": str(STALE),
            "JETTY_PROXY_SWEEP_SECONDS": str(SWEEP),
            "JETTY_PROXY_EVENTS_POLL_SECONDS": "600",
            # Quiet streams stay quiet for longer than a reader waits (EVENTS_READ).
            "JETTY_PROXY_KEEPALIVE_SECONDS": "100",
        }
        owner = sandbox_owner(Settings(database_url=database_url))
        no_leftover_containers.add(owner)
        with (
            _removing_leftovers_on_failure(docker_host, owner),
            _replica("a", tmp_path, env) as a,
            _replica("b", tmp_path, env) as b,
        ):
            # An upload through one server is there for the other.
            uploaded = httpx.post(
                a.url + "/api/v1/sandbox/upload",
                files={"file": ("input.bin", INPUT)},
                data={"collection": "acme", "path": "inputs/input.bin"},
            )
            assert uploaded.status_code == 201, uploaded.text
            assert httpx.get(b.url + "/api/v1/file/acme/inputs/input.bin").content == INPUT

            first = _followed_through_the_other(a, b, gate)
            _downloaded_through_the_other(a, b, first)
            _cancelled_through_the_other(a, b, scripted, docker_host)
            _continued_on_the_other(a, b, first, scripted, docker_host)
            _swept_by_the_other_when_killed(a, b, scripted, docker_host)


def _followed_through_the_other(a: ServeProcess, b: ServeProcess, gate: threading.Event) -> Chat:
    """A run started through a, followed live through b, then resumed with Last-Event-ID."""
    chat = Chat(a.url, _body(FIRST)).start()
    events_url = f"{b.url}{RUN_PATH}/{chat.run_id}/events"
    live: list[dict[str, str]] = []
    with httpx.stream("GET", events_url, timeout=EVENTS_READ) as response:
        for event in server_sent_events(response):
            live.append(event)
            if json.loads(event["data"])["type"] == "tool_result":
                break
    # The agent's tool ran, and the run waits for its model: what b showed, it showed live.
    assert _record(b, chat.run_id)["status"] == "running"
    assert any(json.loads(e["data"])["type"] == "tool_call" for e in live)
    gate.set()
    resumed_url = {"last-event-id": live[-1]["id"]}
    with httpx.stream("GET", events_url, headers=resumed_url, timeout=EVENTS_READ) as response:
        rest = sse_events(response)
    assert json.loads(rest[-1]["data"]) == {"status": "completed"}
    seen = live + rest[:-1]
    assert [int(e["id"]) for e in seen] == list(range(1, len(seen) + 1))
    # Exactly the log that a replays from its start.
    with httpx.stream(
        "GET", f"{a.url}{RUN_PATH}/{chat.run_id}/events", timeout=EVENTS_READ
    ) as response:
        assert [e["data"] for e in sse_events(response)[:-1]] == [e["data"] for e in seen]
    chat.end()
    return chat


def _downloaded_through_the_other(a: ServeProcess, b: ServeProcess, first: Chat) -> None:
    """Its result files, the zip and the signed links in its answer, all through b."""
    record = _record(b, first.run_id)
    assert record["status"] == "completed", record.get("error")
    artifacts = {item["path"]: item for item in record["artifacts"]}
    assert set(artifacts) == {"copy.bin", "notes.txt"}
    assert artifacts["copy.bin"]["url"].startswith(b.url)
    assert httpx.get(artifacts["copy.bin"]["url"]).content == INPUT
    archive = zipfile.ZipFile(
        io.BytesIO(httpx.get(f"{b.url}{RUN_PATH}/{first.run_id}/download").content)
    )
    assert archive.read("copy.bin") == INPUT
    assert archive.read("notes.txt") == b"first\n"
    # The answer's signed link names a; signed with the shared key, it opens on b too.
    final = json.loads(first.data[-2])["jetty"]
    link = next(item["url"] for item in final["artifacts"] if item["path"] == "copy.bin")
    assert link.startswith(a.url + "/s/")
    assert httpx.get(b.url + urlsplit(link).path).content == INPUT


def _cancelled_through_the_other(
    a: ServeProcess, b: ServeProcess, scripted: ScriptedAnthropic, docker_host: str
) -> None:
    """A run started through a, cancelled through b: its container is gone within 2 s."""
    scripted.mode = "hang"
    calls = scripted.calls
    chat = Chat(a.url, _body([{"role": "user", "content": "Copy it again."}])).start()
    _wait_for(lambda: scripted.calls > calls, 60, "the agent's model call")
    assert _containers_of(docker_host, chat.run_id)
    cancelled = httpx.post(f"{b.url}{RUN_PATH}/statuses", json={chat.run_id: "cancelled"})
    assert cancelled.json() == {"statuses": {chat.run_id: "cancelled"}}
    _wait_for(lambda: not _containers_of(docker_host, chat.run_id), 2.0, "the container's removal")
    assert chat.thread is not None
    chat.thread.join(30)
    assert chat.data[-1] == "[DONE]"
    assert json.loads(chat.data[-2])["error"]["code"] == "cancelled"
    assert _record(b, chat.run_id)["status"] == "cancelled"
    scripted.mode = "script"


def _continued_on_the_other(
    a: ServeProcess,
    b: ServeProcess,
    first: Chat,
    scripted: ScriptedAnthropic,
    docker_host: str,
) -> None:
    """The conversation's next turn, sent to b, continues the run a kept: restored on b from
    the saved session, and a lets its kept sandbox go."""
    assert _containers_of(docker_host, first.run_id)  # kept on a for the next turn
    history = [
        *FIRST,
        {"role": "assistant", "content": first.end()},
        {"role": "user", "content": "Once more."},
    ]
    seen_before = len(scripted.seen)
    turn = Chat(b.url, _body(history)).start()
    answer = turn.end()
    assert TURNS[1][1] in answer
    reasoning = "".join(
        c["choices"][0]["delta"].get("reasoning_content") or ""
        for c in validate_sse_chunks("".join(f"data: {d}\n\n" for d in turn.data))
        if c["choices"]
    )
    restored = "restored: agent session, 2 result files, 1 input files"
    assert f"Continuing run {first.run_id} (turn 2) in a new sandbox; {restored}" in reasoning
    # Claude Code resumed its session: the first turn's answer went back to the model.
    calls = [s.json for s in scripted.seen[seen_before:] if s.path == "/v1/messages"]
    assert calls and TURNS[0][1] in json.dumps(calls[0]["messages"])
    _wait_for(lambda: not _containers_of(docker_host, first.run_id), 10, "a's kept sandbox to go")
    record = _record(a, turn.run_id)
    assert record["status"] == "completed", record.get("error")
    assert record["session"]["continues"] == first.run_id
    assert _record(a, first.run_id)["session"]["continued_by"] == turn.run_id
    assert record["environment"]["server"] != _record(a, first.run_id)["environment"]["server"]
    notes = {item["path"]: item for item in record["artifacts"]}["notes.txt"]
    assert httpx.get(notes["url"]).content == b"first\nsecond\n"


def _swept_by_the_other_when_killed(
    a: ServeProcess, b: ServeProcess, scripted: ScriptedAnthropic, docker_host: str
) -> None:
    """a dies (SIGKILL) with a run live: b fails the run and removes its container within the
    documented window."""
    scripted.mode = "hang"
    calls = scripted.calls
    chat = Chat(a.url, _body([{"role": "user", "content": "And again."}])).start()
    _wait_for(lambda: scripted.calls > calls, 60, "the agent's model call")
    assert _record(b, chat.run_id)["status"] == "running"
    a.process.kill()
    a.process.wait(10)

    def failed() -> bool:
        record = _record(b, chat.run_id)
        return record["status"] == "failed" and not _containers_of(docker_host, chat.run_id)

    _wait_for(failed, STALE + SWEEP + HEARTBEAT + SWEEP_WORK, "b's sweep of a's run")
    assert (
        _record(b, chat.run_id)["error"] == "interrupted: the proxy stopped while the run was live"
    )
    scripted.mode = "script"
