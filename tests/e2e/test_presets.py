"""A chat UI picks a preset from /v1/models and gets a real run, shaped as the UI sends it."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.presets import Preset
from tests.e2e.conftest import TEST_IMAGE, ProxyFactory, trajectory
from tests.support.chat_ui_prompts import template
from tests.support.openapi import validate_sse_chunks
from tests.support.scripted_anthropic import ScriptedAnthropic
from tests.support.seeded import Seeder

pytestmark = [pytest.mark.docker, pytest.mark.agents]


HELPER = Preset(
    model="claude-sonnet-4-6",
    runbook="# Helper\n\nDo what the user asks; write results to /app/results.",
    jetty={"collection": "acme", "task": "chat", "image": TEST_IMAGE, "timeout_sec": 120},
)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24


def test_choosing_a_preset_model_runs_the_preset(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str]
) -> None:
    with make_proxy(presets={"helper": HELPER}) as proxy:
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


def test_what_a_turn_attaches_is_in_the_agents_assets_and_its_links_open_without_a_key(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str], tmp_path: Path
) -> None:
    scripted = anthropic[0]
    scripted.command = "ls /app/assets | tee /app/results/assets.txt"
    key = Seeder(tmp_path / "data").key("acme")  # keys on: every request needs one
    # Open WebUI with RAG_SYSTEM_CONTEXT: the retrieved passages come in a system message.
    context = '<source id="1" name="report.pdf">Revenue rose.</source>'
    rag = template("open-webui", "rag").replace("{{CONTEXT}}", context)
    with make_proxy(presets={"helper": HELPER}) as proxy:
        client = openai.OpenAI(base_url=proxy + "/v1", api_key=key, max_retries=0, timeout=180)
        uploaded = client.files.create(file=("sales.csv", b"region,total\n"), purpose="user_data")
        notes = base64.b64encode(b"# Notes").decode()
        stream = client.chat.completions.create(
            model="jetty/helper",
            stream=True,
            messages=[
                {"role": "system", "content": rag},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What did I attach?"},
                        {"type": "file", "file": {"file_id": uploaded.id}},
                        {
                            "type": "file",
                            "file": {
                                "filename": "notes.md",
                                "file_data": f"data:text/markdown;base64,{notes}",
                            },
                        },
                        {
                            "type": "image_url",
                            "image_url": {
                                "url": f"data:image/png;base64,{base64.b64encode(PNG).decode()}"
                            },
                        },
                    ],
                },
            ],
        )
        answer = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

        # The agent's tool call listed /app/assets, and the model got what it printed.
        listed = "image-1.png\nnotes.md\nreport.pdf.txt\nsales.csv"
        results = [r for seen in scripted.seen for r in _tool_results(seen.json)]
        assert any(listed in result for result in results), results
        # Its instruction named them; its runbook is the preset's, not the retrieval template.
        first = scripted.seen[0].json
        prompt = str(first["messages"])
        assert "What did I attach?" in prompt
        assert "`sales.csv`, `notes.md`, `image-1.png`" in prompt
        assert "`report.pdf.txt` (from report.pdf)" in prompt
        assert "# Helper" in str(first.get("system"))
        assert "### Task:" not in str(first.get("system")) + prompt

        # The answer's link to the result file downloads without a key, while keys are on.
        link = re.search(r"\[assets\.txt\]\((\S+?)\)", answer)
        assert link is not None, answer
        download = httpx.get(link.group(1))
        assert download.status_code == 200
        assert download.text == listed + "\n"
        assert httpx.get(proxy + "/v1/models").status_code == 401


def _tool_results(request: dict[str, Any]) -> list[str]:
    """The text of every tool result in an Anthropic Messages request."""
    texts = []
    for message in request.get("messages") or []:
        content = message.get("content")
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                inner = block.get("content")
                parts = inner if isinstance(inner, list) else [{"text": inner}]
                texts += [str(part.get("text", "")) for part in parts if isinstance(part, dict)]
    return texts
