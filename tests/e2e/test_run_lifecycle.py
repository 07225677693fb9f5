"""Nothing leaks, nothing is lost: disconnects, timeouts, detached runs, secrets, restarts."""

from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from proxy.runs.runtime import sandbox_owner
from proxy.sandbox import DockerBackend, Orphans, SandboxSpec
from proxy.sandbox.base import LABEL_OWNER
from proxy.settings import Settings
from tests.e2e.conftest import (
    TEST_IMAGE,
    ProxyFactory,
    managed_containers,
    trajectory,
)
from tests.support.scripted_anthropic import ScriptedAnthropic

pytestmark = [pytest.mark.docker, pytest.mark.agents]

RUNBOOK = "# Runbook\n\nWrite something into /app/results."
MESSAGES = [{"role": "system", "content": RUNBOOK}, {"role": "user", "content": "Go."}]


def _request(**jetty: Any) -> dict[str, Any]:
    block = {"runbook": True, "collection": "acme", "task": "life", "image": TEST_IMAGE, **jetty}
    return {"model": "claude-sonnet-4-6", "messages": MESSAGES, "stream": True, "jetty": block}


def _wait_for(predicate: Any, seconds: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < seconds, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - started


def _status(proxy: str, run_id: str) -> str:
    status: str = trajectory(proxy, "acme", "life", run_id)["status"]
    return status


def test_client_disconnect_cancels_the_run_and_removes_the_container(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str], docker_host: str
) -> None:
    scripted, _ = anthropic
    scripted.mode = "hang"  # the agent waits on its model for ever
    with make_proxy() as proxy:
        with httpx.stream(
            "POST", proxy + "/v1/chat/completions", json=_request(), timeout=60
        ) as response:
            run_id = response.headers["x-jetty-trajectory-id"]
            lines = response.iter_lines()
            assert next(lines).startswith("data:")
            _wait_for(lambda: scripted.calls >= 1, 30, "the agent's first model call")
            assert any(
                c["Labels"].get("jetty-proxy.run-id") == run_id
                for c in managed_containers(docker_host)
            )
        # The client is gone: the container must be removed within 2 s.
        elapsed = _wait_for(
            lambda: (
                not any(
                    c["Labels"].get("jetty-proxy.run-id") == run_id
                    for c in managed_containers(docker_host)
                )
            ),
            10,
            "the container to be removed",
        )
        assert elapsed < 2.0
        _wait_for(lambda: _status(proxy, run_id) == "cancelled", 5, "the run to be cancelled")


def test_timeout_is_enforced_through_the_engine(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str]
) -> None:
    scripted, _ = anthropic
    scripted.mode = "hang"
    with make_proxy() as proxy:
        started = time.monotonic()
        response = httpx.post(
            proxy + "/v1/chat/completions", json=_request(timeout_sec=3), timeout=60
        )
        assert time.monotonic() - started < 30
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        assert data[-1] == "[DONE]"
        error = json.loads(data[-2])["error"]
        assert error["code"] == "timeout"
        assert "timed out" in error["message"]
        run_id = response.headers["x-jetty-trajectory-id"]
        record = trajectory(proxy, "acme", "life", run_id)
        assert record["status"] == "failed"
        assert "timed out" in record["error"]


def test_detached_run_survives_the_client(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str]
) -> None:
    scripted, _ = anthropic
    scripted.mode = "slow"
    scripted.delay = 1.0
    with make_proxy() as proxy:
        with httpx.stream(
            "POST", proxy + "/v1/chat/completions", json=_request(detach=True), timeout=60
        ) as response:
            run_id = response.headers["x-jetty-trajectory-id"]
            assert next(response.iter_lines()).startswith("data:")
        _wait_for(lambda: _status(proxy, run_id) == "completed", 60, "the detached run to finish")
        record = trajectory(proxy, "acme", "life", run_id)
        assert [a["path"] for a in record["artifacts"]] == ["hello.txt"]
        # The events stream replays the whole run for a client that comes back.
        events = httpx.get(f"{proxy}/api/v1/trajectory/acme/life/{run_id}/events", timeout=10).text
        assert "Done: wrote hello.txt" in events


def test_collection_secrets_reach_the_run_and_stay_out_of_the_record(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str], tmp_path: Path
) -> None:
    scripted, _ = anthropic
    secret = "s3cret-value-9f8e7d"
    # Printed too: the agent's session (kept for a follow-up) has the tool's output.
    scripted.command = 'mkdir -p /app/results && echo "pw=$DB_PASSWORD" | tee /app/results/pw.txt'
    # The model says it in its answer, which it streams in two text deltas cut mid-secret.
    scripted.final_text = f"The value is {secret}."
    half = len(scripted.final_text) // 2
    assert scripted.final_text.index(secret) < half < scripted.final_text.index(".")
    runbook = (
        "---\nsecrets:\n  DB_PASSWORD:\n    env: DB_PASSWORD\n    required: true\n---\n# Use it"
    )
    request = _request()
    request["messages"] = [{"role": "system", "content": runbook}, MESSAGES[1]]
    with make_proxy() as proxy:
        missing = httpx.post(proxy + "/v1/chat/completions", json=request)
        assert missing.status_code == 400
        assert "DB_PASSWORD" in missing.json()["error"]["message"]
        patched = httpx.patch(
            f"{proxy}/api/v1/collections/acme/environment",
            json={"secrets": {"DB_PASSWORD": secret}},
        )
        assert patched.status_code == 200
        assert secret not in patched.text
        response = httpx.post(proxy + "/v1/chat/completions", json=request, timeout=120)
        run_id = response.headers["x-jetty-trajectory-id"]
        record = trajectory(proxy, "acme", "life", run_id)
        assert record["status"] == "completed"
        pw = httpx.get(next(a["url"] for a in record["artifacts"]))
        assert pw.text == f"pw={secret}\n"
        events = httpx.get(f"{proxy}/api/v1/trajectory/acme/life/{run_id}/events").text
        assert secret not in json.dumps(record)
        assert secret not in events
    # The live chat stream: the tool's output and the answer, with the secret replaced, and
    # no chunk with a piece of it either (the answer's deltas cut it in two).
    text = scripted.final_text
    pieces = (text[:half], text[half:])  # "The value is s3c", "ret-value-9f8e7d."
    answer = scripted.seen[-1].sent.decode()
    assert all(json.dumps(piece) in answer for piece in pieces) and secret not in answer
    assert secret not in response.text
    assert all(piece.removesuffix(".")[-8:] not in response.text for piece in pieces)
    assert response.text.count("[redacted:DB_PASSWORD]") >= 2
    assert "The value is [redacted:DB_PASSWORD]." in _content(response.text)
    # The saved agent session (a tar.gz blob) has the secret's placeholder, never its value.
    sessions = [_members(blob) for blob in (tmp_path / "data").rglob("*") if _is_gzip(blob)]
    assert len(sessions) == 1
    saved = b"".join(sessions[0].values())
    assert b"[redacted:DB_PASSWORD]" in saved
    assert secret.encode() not in saved


def _content(stream: str) -> str:
    """The answer text of a chat stream (every content delta, joined)."""
    parts = []
    for line in stream.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                parts.append(choice.get("delta", {}).get("content") or "")
    return "".join(parts)


def _is_gzip(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open("rb") as file:
        return file.read(2) == b"\x1f\x8b"


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, mode="r:gz") as archive:
        return {
            m.name: archive.extractfile(m).read()  # type: ignore[union-attr]
            for m in archive
            if m.isfile()
        }


def test_start_removes_its_own_stale_containers_and_no_one_elses(
    make_proxy: ProxyFactory, docker_host: str, tmp_path: Path
) -> None:
    owner = sandbox_owner(Settings(data_dir=tmp_path / "data"))

    async def leave_behind(run_id: str, labels: dict[str, str]) -> None:
        backend = DockerBackend.from_url(docker_host)
        spec = SandboxSpec(
            run_id=run_id, collection="acme", image=TEST_IMAGE, argv=["true"], labels=labels
        )
        try:
            await backend.launch(spec)
        finally:
            await backend.aclose()

    def present(run_id: str) -> bool:
        return any(
            c["Labels"].get("jetty-proxy.run-id") == run_id for c in managed_containers(docker_host)
        )

    async def remove_other() -> None:
        backend = DockerBackend.from_url(docker_host)
        try:
            await backend.remove_orphans(Orphans(owner="another-installation"))
        finally:
            await backend.aclose()

    anyio.run(leave_behind, "deadbeef", {LABEL_OWNER: owner})
    anyio.run(leave_behind, "0therpr0", {LABEL_OWNER: "another-installation"})
    try:
        with make_proxy():
            assert not present("deadbeef")
            assert present("0therpr0")
    finally:
        anyio.run(remove_other)


def test_a_second_server_on_the_same_database_and_engine_leaves_the_first_ones_run(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str], docker_host: str
) -> None:
    scripted, _ = anthropic
    scripted.mode = "hang"

    def present(run_id: str) -> bool:
        return any(
            c["Labels"].get("jetty-proxy.run-id") == run_id for c in managed_containers(docker_host)
        )

    with (
        make_proxy() as first,
        httpx.stream("POST", first + "/v1/chat/completions", json=_request(), timeout=60) as run,
    ):
        run_id = run.headers["x-jetty-trajectory-id"]
        _wait_for(lambda: scripted.calls >= 1, 30, "the agent's first model call")
        # Same data directory, so the same database; same Docker engine.
        with make_proxy() as second:
            assert present(run_id)
            assert _status(second, run_id) == "running"
        assert present(run_id)
        assert _status(first, run_id) == "running"
        httpx.post(f"{first}/api/v1/trajectory/acme/life/statuses", json={run_id: "cancelled"})
        assert [line for line in run.iter_lines() if line][-1] == "data: [DONE]"
    assert not present(run_id)


def test_cancel_through_the_api_stops_the_run(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str], docker_host: str
) -> None:
    scripted, _ = anthropic
    scripted.mode = "hang"
    with make_proxy() as proxy:
        with httpx.stream(
            "POST", proxy + "/v1/chat/completions", json=_request(), timeout=60
        ) as response:
            run_id = response.headers["x-jetty-trajectory-id"]
            lines = response.iter_lines()
            _wait_for(lambda: scripted.calls >= 1, 30, "the agent's first model call")
            cancelled = httpx.post(
                f"{proxy}/api/v1/trajectory/acme/life/statuses", json={run_id: "cancelled"}
            )
            assert cancelled.json() == {"statuses": {run_id: "cancelled"}}
            rest = [line for line in lines if line.startswith("data:")]
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][5:])["error"]["code"] == "cancelled"
        _wait_for(
            lambda: (
                not any(
                    c["Labels"].get("jetty-proxy.run-id") == run_id
                    for c in managed_containers(docker_host)
                )
            ),
            10,
            "the container to be removed",
        )
        assert _status(proxy, run_id) == "cancelled"
