"""A real run seen in a real browser, with keys on: the first chunk's run_url opens the live
run's page, the answer's result link and run link open without a key, and the finished page
previews the result file.

Real parts: the pinned Claude Code CLI on the local sandbox backend, the scripted Anthropic
server (held after the agent's tool call, so the run is live while the page watches), the
`openai` client, and Debian's Chromium.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk
from playwright.sync_api import expect

from proxy.app import create_app
from proxy.sandbox.local import LocalBackend
from proxy.settings import Settings
from tests.e2e.conftest import PROVIDER_KEY
from tests.support.browser import WatchedPage
from tests.support.live import serve
from tests.support.scripted_anthropic import ScriptedAnthropic
from tests.support.seeded import Seeder

pytestmark = [pytest.mark.agents, pytest.mark.browser]

CSV = "region,total\\nNorth,10\\n"


def test_a_live_run_in_the_browser_and_links_that_open_without_a_key(
    tmp_path: Path,
    agent_cache: Path,
    anthropic: tuple[ScriptedAnthropic, str],
    watched: WatchedPage,
) -> None:
    scripted, anthropic_url = anthropic
    scripted.command = f"printf '{CSV}' > \"$JETTY_APP_DIR/results/sales.csv\""
    scripted.final_text = "Wrote sales.csv. <img src=x onerror=\"window.__pwned='answer'\">"
    gate = threading.Event()
    scripted.gate = gate
    key = Seeder(tmp_path / "data").key("acme")
    settings = Settings(
        data_dir=tmp_path / "data",
        upstream_url="http://127.0.0.1:9/v1",
        backend="local",
        agent_cache_dir=agent_cache,
        default_image="local",
        anthropic_base_url=anthropic_url,
        anthropic_api_key=PROVIDER_KEY,
        keepalive_seconds=15.0,
        auth_cache_seconds=0.0,
    )
    backend = LocalBackend(tmp_path / "runs", use_bwrap=False, kill_grace=1.0)
    page = watched.page
    chunks: list[ChatCompletionChunk] = []
    with serve(create_app(settings, sandbox_backend=backend)) as proxy:
        client = openai.OpenAI(base_url=proxy + "/v1", api_key=key, max_retries=0, timeout=180)
        stream = client.chat.completions.create(
            model="claude-sonnet-4-6",
            stream=True,
            messages=[
                {"role": "system", "content": "# Runbook\n\nWrite sales.csv."},
                {"role": "user", "content": "Execute the runbook."},
            ],
            extra_body={"jetty": {"runbook": True, "collection": "acme", "task": "sales"}},
        )
        chunks.append(next(iter(stream)))
        reader = threading.Thread(target=lambda: chunks.extend(stream), daemon=True)
        reader.start()
        try:
            meta: dict[str, Any] = (chunks[0].model_extra or {})["jetty"]
            run_id = meta["trajectory_id"]
            assert meta["run_url"].startswith(f"{proxy}/s/")

            # The page of the live run: the agent's tool call shows up while it runs.
            page.goto(meta["run_url"])
            expect(page.locator("#status")).to_have_text("running", timeout=60_000)
            tool = page.locator("#activity .tool").first
            expect(tool.locator(".tool-name")).to_have_text("Bash", timeout=60_000)
            expect(tool.locator(".tool-state")).to_have_text("done", timeout=60_000)
        finally:
            gate.set()
        reader.join(timeout=120)
        assert not reader.is_alive()

        # Finished: the page reloads as the completed run, with the result previewed.
        expect(page.locator("#status")).to_have_text("completed", timeout=30_000)
        expect(page.locator("table.csv td").first).to_have_text("North")
        assert watched.probe_for_script()["pwned"] is None

        answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        result = re.search(r"\[sales\.csv\]\((\S+?)\)", answer)
        marker = re.search(rf"Jetty run \[{run_id}\]\((\S+?)\)", answer)
        assert result is not None and marker is not None
        assert marker.group(1) == meta["run_url"]
        # Keys are on, and neither link needs one.
        download = httpx.get(result.group(1))
        assert download.status_code == 200
        assert download.content == b"region,total\nNorth,10\n"
        assert httpx.get(marker.group(1), headers={"accept": "text/html"}).status_code == 200
        assert httpx.get(f"{proxy}/runs/acme/sales/{run_id}").status_code == 401
        final = (chunks[-1].model_extra or {}).get("jetty") or {}
        assert final.get("run_url") == meta["run_url"]
        assert final["artifacts"][0]["url"] == result.group(1)
    assert watched.problems == []
