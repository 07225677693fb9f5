"""A run whose model provider is not configured is refused with a 400, before any sandbox.

Live proxy on the local backend with an empty agent cache: a request that got past the checks
would install an agent and create a trajectory, so "nothing started" is visible as no trajectory
and no agent cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import ProxyFactory
from tests.support.openapi import validate

RUNBOOK = "# Runbook\n\nWrite hello.txt into {{results_dir}}."
SERVER_ANTHROPIC_KEY = "sk-ant-server-key-0123456789"
COLLECTION_KEY = "sk-or-collection-key-0123456789"


@pytest.fixture
def agent_cache(tmp_path: Path) -> Path:
    return tmp_path / "agents"


@pytest.fixture
def proxy(make_proxy: ProxyFactory, agent_cache: Path) -> Iterator[str]:
    """Anthropic configured on the server; OpenAI, Google, OpenRouter and Bedrock not."""
    with make_proxy(
        default_image="local", agent_cache_dir=agent_cache, anthropic_api_key=SERVER_ANTHROPIC_KEY
    ) as url:
        yield url


def run(
    proxy: str,
    model: str,
    runbook: str = RUNBOOK,
    *,
    stream: bool = False,
    **jetty: Any,
) -> httpx.Response:
    return httpx.post(
        proxy + "/v1/chat/completions",
        json={
            "model": model,
            "stream": stream,
            "messages": [
                {"role": "system", "content": runbook},
                {"role": "user", "content": "Execute the runbook."},
            ],
            "jetty": {"runbook": True, "collection": "acme", "task": "t", **jetty},
        },
        timeout=30,
    )


def set_secrets(proxy: str, **secrets: str) -> None:
    response = httpx.patch(
        f"{proxy}/api/v1/collections/acme/environment", json={"secrets": secrets}
    )
    assert response.status_code == 200, response.text


def assert_refused(response: httpx.Response, param: str, code: str) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["x-should-retry"] == "false"
    body: dict[str, Any] = response.json()
    validate("ErrorResponse", body)
    error: dict[str, Any] = body["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    return error


def assert_nothing_started(proxy: str, agent_cache: Path) -> None:
    listing = httpx.get(f"{proxy}/api/v1/db/trajectories/acme/t").json()
    assert listing["total"] == 0
    assert not agent_cache.exists()


@pytest.mark.parametrize(
    ("model", "jetty", "mentions"),
    [
        ("claude-sonnet-4-6", {"model_provider": "openrouter"}, "JETTY_PROXY_OPENROUTER_API_KEY"),
        ("gpt-5.5", {"model_provider": "openrouter"}, "OPENROUTER_API_KEY"),
        ("gpt-5.5", {}, "JETTY_PROXY_OPENAI_API_KEY"),
        ("gemini-2.5-pro", {}, "GEMINI_API_KEY or GOOGLE_API_KEY"),
        ("claude-sonnet-4-6", {"model_provider": "bedrock"}, "does not sign AWS requests"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_an_unconfigured_provider_is_a_400_before_anything_starts(
    proxy: str, agent_cache: Path, model: str, jetty: dict[str, Any], mentions: str, stream: bool
) -> None:
    response = run(proxy, model, stream=stream, **jetty)
    error = assert_refused(response, "jetty.model_provider", "model_provider_not_configured")
    assert mentions in error["message"]
    assert "x-jetty-trajectory-id" not in response.headers
    assert_nothing_started(proxy, agent_cache)


def test_the_provider_can_come_from_the_runbook(proxy: str, agent_cache: Path) -> None:
    runbook = "---\nmodel_provider: openrouter\n---\n" + RUNBOOK
    error = assert_refused(
        run(proxy, "claude-sonnet-4-6", runbook),
        "jetty.model_provider",
        "model_provider_not_configured",
    )
    assert "'openrouter'" in error["message"]
    assert_nothing_started(proxy, agent_cache)


def test_a_provider_the_agent_cannot_speak_is_a_400(proxy: str, agent_cache: Path) -> None:
    error = assert_refused(
        run(proxy, "gemini-2.5-pro", model_provider="openrouter"),
        "jetty.model_provider",
        "invalid_value",
    )
    assert "cannot use model provider 'openrouter'" in error["message"]
    assert_nothing_started(proxy, agent_cache)


def test_a_collection_base_url_without_its_own_key_is_refused(
    proxy: str, agent_cache: Path
) -> None:
    set_secrets(proxy, ANTHROPIC_BASE_URL="https://collection-gateway.example")
    error = assert_refused(run(proxy, "claude-sonnet-4-6"), "jetty.collection", "invalid_value")
    assert "ANTHROPIC_BASE_URL" in error["message"]
    assert "collection-gateway.example" not in error["message"]
    assert_nothing_started(proxy, agent_cache)


def test_a_runbook_cannot_take_a_provider_key_into_the_sandbox(
    proxy: str, agent_cache: Path
) -> None:
    set_secrets(proxy, OPENROUTER_API_KEY=COLLECTION_KEY)
    runbook = "---\nsecrets:\n  OPENROUTER_API_KEY:\n    env: MY_KEY\n---\n" + RUNBOOK
    response = run(proxy, "claude-sonnet-4-6", runbook)
    error = assert_refused(response, "messages", "invalid_value")
    assert "'OPENROUTER_API_KEY' is a model provider credential" in error["message"]
    assert COLLECTION_KEY not in response.text
    assert_nothing_started(proxy, agent_cache)
