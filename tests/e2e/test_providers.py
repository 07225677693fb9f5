"""``model_provider`` and collection secrets decide where a real Claude Code run's model calls go.

Real parts: the Docker engine, the offline test image, the pinned Claude Code CLI, the proxy's
relay on its mounted unix socket, and two scripted Anthropic servers: the server's default
Anthropic upstream and a second one standing in for OpenRouter's Anthropic-compatible endpoint
(``openrouter_base_url``). Each records the key it was sent, so the tests see which upstream got
the calls and with which key, and that no key reached the sandbox, the stream or the records.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import PROVIDER_KEY, TEST_IMAGE, ProxyFactory, trajectory
from tests.support.live import serve
from tests.support.openapi import validate_sse_chunks
from tests.support.scripted_anthropic import ScriptedAnthropic

pytestmark = [pytest.mark.docker, pytest.mark.agents]

OPENROUTER_KEY = "sk-or-v1-e2e-openrouter-secret-0123456789"
COLLECTION_KEY = "sk-ant-e2e-collection-secret-9876543210"
RUNBOOK = "# Runbook\n\nWrite hello.txt into {{results_dir}}."
COMMAND = "mkdir -p /app/results && echo hi > /app/results/hello.txt && env > /app/results/env.txt"
Upstream = tuple[ScriptedAnthropic, str]


@pytest.fixture
def openrouter() -> Iterator[Upstream]:
    scripted = ScriptedAnthropic(command=COMMAND)
    with serve(scripted.app()) as url:
        yield scripted, url


def run(proxy: str, **jetty: Any) -> tuple[httpx.Response, str]:
    """A streamed claude-code run in collection acme; returns the response and the run id."""
    response = httpx.post(
        proxy + "/v1/chat/completions",
        json={
            "model": "claude-sonnet-4-6",
            "stream": True,
            "messages": [
                {"role": "system", "content": RUNBOOK},
                {"role": "user", "content": "Execute the runbook."},
            ],
            "jetty": {
                "runbook": True,
                "collection": "acme",
                "task": "providers",
                "agent": "claude-code",
                "image": TEST_IMAGE,
                "timeout_sec": 120,
                **jetty,
            },
        },
        timeout=180,
    )
    assert response.status_code == 200, response.text
    return response, response.headers["x-jetty-trajectory-id"]


def check_run(proxy: str, response: httpx.Response, run_id: str, *keys: str) -> list[Any]:
    """The run completed, and none of ``keys`` is in its stream, sandbox, record or events.

    Returns the run's model_call events.
    """
    chunks = validate_sse_chunks(response.text)
    final = [c for c in chunks if c.get("choices") and c["choices"][0]["finish_reason"]][-1]
    meta = final["jetty"]
    assert meta["status"] == "completed", response.text
    urls = {artifact["path"]: artifact["url"] for artifact in meta["artifacts"]}
    env = httpx.get(urls["env.txt"]).text
    assert "ANTHROPIC_API_KEY=jrt-" in env  # the agent holds only its run token
    record = json.dumps(trajectory(proxy, "acme", "providers", run_id))
    events = httpx.get(f"{proxy}/api/v1/trajectory/acme/providers/{run_id}/events", timeout=10).text
    for key in keys:
        for where, text in [("stream", response.text), ("sandbox env", env)]:
            assert key not in text, where
        assert key not in record
        assert key not in events
    payloads = [
        json.loads(line[5:])
        for line in events.splitlines()
        if line.startswith("data:") and '"model_call"' in line
    ]
    calls = [p["data"] for p in payloads if p.get("type") == "model_call"]
    assert calls
    return calls


def test_openrouter_provider_sends_the_calls_to_openrouter_with_its_key(
    make_proxy: ProxyFactory, anthropic: Upstream, openrouter: Upstream
) -> None:
    default, _ = anthropic
    scripted, url = openrouter
    with make_proxy(openrouter_base_url=url, openrouter_api_key=OPENROUTER_KEY) as proxy:
        response, run_id = run(proxy, model_provider="openrouter")
        calls = check_run(proxy, response, run_id, OPENROUTER_KEY, PROVIDER_KEY)

    assert default.seen == []  # the default Anthropic upstream saw nothing
    assert scripted.calls == 2
    for seen in scripted.seen:
        assert seen.path.startswith("/v1/messages")
        assert seen.headers["authorization"] == f"Bearer {OPENROUTER_KEY}"
        assert "x-api-key" not in seen.headers
        assert "jrt-" not in json.dumps(seen.headers)
    assert {call["provider"] for call in calls} == {"openrouter"}


def test_a_collection_anthropic_key_replaces_the_servers(
    make_proxy: ProxyFactory, anthropic: Upstream, openrouter: Upstream
) -> None:
    scripted, _ = anthropic
    scripted.command = COMMAND
    with make_proxy() as proxy:
        patched = httpx.patch(
            f"{proxy}/api/v1/collections/acme/environment",
            json={"secrets": {"ANTHROPIC_API_KEY": COLLECTION_KEY}},
        )
        assert patched.status_code == 200, patched.text
        assert COLLECTION_KEY not in patched.text
        response, run_id = run(proxy)
        calls = check_run(proxy, response, run_id, COLLECTION_KEY, PROVIDER_KEY)

    assert scripted.calls == 2
    assert {seen.headers.get("x-api-key") for seen in scripted.seen} == {COLLECTION_KEY}
    assert {call["provider"] for call in calls} == {"anthropic"}
    assert openrouter[0].seen == []


def test_a_collection_base_url_and_key_take_the_calls_elsewhere(
    make_proxy: ProxyFactory, anthropic: Upstream, openrouter: Upstream
) -> None:
    default, _ = anthropic
    gateway, url = openrouter
    # A collection's URL may not reach internal addresses unless the operator allows them.
    with make_proxy(fetch_allow_hosts=["127.0.0.1"]) as proxy:
        patched = httpx.patch(
            f"{proxy}/api/v1/collections/acme/environment",
            json={"secrets": {"ANTHROPIC_API_KEY": COLLECTION_KEY, "ANTHROPIC_BASE_URL": url}},
        )
        assert patched.status_code == 200, patched.text
        response, run_id = run(proxy)
        check_run(proxy, response, run_id, COLLECTION_KEY, PROVIDER_KEY)

    assert default.seen == []
    assert gateway.calls == 2
    assert {seen.headers.get("x-api-key") for seen in gateway.seen} == {COLLECTION_KEY}
