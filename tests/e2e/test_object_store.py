"""Runs whose blobs live in an S3-compatible object store instead of a local directory.

Real parts: the S3 test server (moto's server mode), the Docker engine, the offline test
image, the pinned Claude Code and a scripted Anthropic server. An uploaded input goes into the
sandbox from the object store, the run's results and its agent session go back to it, and a
follow-up turn in a new sandbox is restored from there: session, results and input.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import TEST_IMAGE, ProxyFactory, trajectory
from tests.support.blobs import s3_bucket
from tests.support.openapi import validate_sse_chunks
from tests.support.scripted_anthropic import ScriptedAnthropic

pytestmark = [pytest.mark.docker, pytest.mark.agents, pytest.mark.s3]

INPUT = b"line from the upload\n"
TURNS = [
    (
        "mkdir -p /app/results && cat /app/assets/input.txt > /app/results/notes.txt",
        "Copied the input into notes.txt.",
    ),
    ("cat /app/assets/input.txt >> /app/results/notes.txt", "Appended the input again."),
]
RUNBOOK = "# Notes\n\nDo what the user asks with the input file."
FIRST = [{"role": "user", "content": "Copy the input."}]


def _turn(proxy: str, messages: list[dict[str, Any]]) -> tuple[str, str, str]:
    body = {
        "model": "claude-sonnet-4-6",
        "stream": True,
        "messages": [{"role": "system", "content": RUNBOOK}, *messages],
        "jetty": {
            "runbook": True,
            "collection": "acme",
            "task": "chat",
            "image": TEST_IMAGE,
            "timeout_sec": 120,
            "file_paths": ["acme/inputs/input.txt"],
        },
    }
    response = httpx.post(proxy + "/v1/chat/completions", json=body, timeout=180)
    assert response.status_code == 200, response.text
    deltas = [c["choices"][0]["delta"] for c in validate_sse_chunks(response.text) if c["choices"]]
    content = "".join(d.get("content") or "" for d in deltas)
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    return response.headers["x-jetty-trajectory-id"], content, reasoning


def test_a_run_and_its_restored_follow_up_on_the_object_store(
    make_proxy: ProxyFactory,
    anthropic: tuple[ScriptedAnthropic, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    scripted = anthropic[0]
    scripted.turns = TURNS
    with (
        s3_bucket(monkeypatch) as bucket,
        make_proxy(blob_url=bucket.url, keep_sandbox_seconds=0) as proxy,
    ):
        uploaded = httpx.post(
            proxy + "/api/v1/sandbox/upload",
            files={"file": ("input.txt", INPUT)},
            data={"collection": "acme", "path": "inputs/input.txt"},
        )
        assert uploaded.status_code == 201, uploaded.text

        first_id, first_answer, _ = _turn(proxy, FIRST)
        assert TURNS[0][1] in first_answer
        first = trajectory(proxy, "acme", "chat", first_id)
        assert first["status"] == "completed", first.get("error")
        assert first["session"]["saved_home"] is True
        seen_before = len(scripted.seen)

        second = [
            *FIRST,
            {"role": "assistant", "content": first_answer},
            {"role": "user", "content": "Once more."},
        ]
        second_id, second_answer, reasoning = _turn(proxy, second)
        assert TURNS[1][1] in second_answer
        restored = "restored: agent session, 1 result files, 1 input files"
        assert f"Continuing run {first_id} (turn 2) in a new sandbox; {restored}" in reasoning
        calls = [s.json for s in scripted.seen[seen_before:] if s.path == "/v1/messages"]
        assert calls and TURNS[0][1] in json.dumps(calls[0]["messages"])

        record = trajectory(proxy, "acme", "chat", second_id)
        assert record["status"] == "completed", record.get("error")
        notes = {a["path"]: a for a in record["artifacts"]}["notes.txt"]
        assert httpx.get(notes["url"]).content == INPUT * 2
        download = f"/api/v1/trajectory/acme/chat/{second_id}/download"
        archive = zipfile.ZipFile(io.BytesIO(httpx.get(proxy + download).content))
        assert archive.read("notes.txt") == INPUT * 2

        # Everything went to the bucket: the input, both runs' results and sessions.
        assert len(bucket.keys()) >= 5 and bucket.uploads() == []
    assert not (tmp_path / "data" / "blobs").exists()
