"""A chat UI picks a preset from /v1/models and gets a real run, shaped as the UI sends it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from proxy.presets import Preset
from tests.e2e.conftest import TEST_IMAGE, ProxyFactory, trajectory
from tests.support.openapi import validate_sse_chunks
from tests.support.scripted_anthropic import ScriptedAnthropic

pytestmark = [pytest.mark.docker, pytest.mark.agents]


def test_choosing_a_preset_model_runs_the_preset(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str]
) -> None:
    presets = {
        "helper": Preset(
            model="claude-sonnet-4-6",
            runbook="# Helper\n\nDo what the user asks; write results to /app/results.",
            jetty={"collection": "acme", "task": "chat", "image": TEST_IMAGE, "timeout_sec": 120},
        )
    }
    with make_proxy(presets=presets) as proxy:
        models = {m["id"] for m in httpx.get(proxy + "/v1/models").json()["data"]}
        assert "jetty/helper" in models
        body: dict[str, Any] = {
            "model": "jetty/helper",
            "stream": True,
            "user": "alice",
            "messages": [{"role": "user", "content": "Please write hello.txt"}],
        }
        response = httpx.post(proxy + "/v1/chat/completions", json=body, timeout=120)
        assert response.status_code == 200
        run_id = response.headers["x-jetty-trajectory-id"]
        chunks = validate_sse_chunks(response.text)
        text = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )
        assert "Done: wrote hello.txt" in text
        record = trajectory(proxy, "acme", "chat", run_id)
        assert record["status"] == "completed"
        assert [a["path"] for a in record["artifacts"]] == ["hello.txt"]
        # The agent got the preset's runbook and the user's message as its instruction.
        request = anthropic[0].seen[0].json
        assert "Please write hello.txt" in str(request["messages"])
        assert "# Helper" in str(request.get("system"))
