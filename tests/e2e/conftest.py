"""End-to-end fixtures: a real Docker engine, the offline test image, the real pinned agent CLIs,
a scripted model server speaking the provider's real wire protocol, and a live proxy.

Outside CI a missing piece skips these tests; in CI (``CI=true``) it fails them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from proxy.app import create_app
from proxy.runs.runtime import sandbox_owner
from proxy.sandbox import DockerBackend
from proxy.sandbox.base import LABEL_MANAGED, LABEL_OWNER
from proxy.settings import Settings
from tests.support.ci import unavailable
from tests.support.live import serve
from tests.support.scripted_anthropic import ScriptedAnthropic
from tests.support.scripted_gemini import ScriptedGemini
from tests.support.scripted_responses import ScriptedResponses

TEST_IMAGE = "127.0.0.1:5000/jetty/testenv:bookworm"
PROVIDER_KEY = "sk-ant-e2e-provider-secret-0123456789"
ProxyFactory = Callable[..., AbstractContextManager[str]]


def _require(name: str) -> str:
    value = os.environ.get(name)
    if value:
        return value
    unavailable(f"{name} is not set", "scripts/ci/ starts what it names")


@pytest.fixture(scope="session")
def docker_host() -> str:
    return os.environ.get("JETTY_PROXY_DOCKER_HOST") or _require("DOCKER_HOST")


@pytest.fixture(scope="session")
def agent_cache() -> Path:
    return Path(_require("JETTY_PROXY_AGENT_CACHE_DIR"))


def managed_containers(docker_host: str) -> list[dict[str, Any]]:
    async def query() -> list[dict[str, Any]]:
        backend = DockerBackend.from_url(docker_host)
        try:
            response = await backend._engine.request(
                "GET",
                "/containers/json",
                params={"all": "1", "filters": json.dumps({"label": [f"{LABEL_MANAGED}=true"]})},
            )
            found: list[dict[str, Any]] = response.json()
            return found
        finally:
            await backend.aclose()

    return anyio.run(query)


@pytest.fixture
def no_leftover_containers(docker_host: str) -> Iterator[set[str]]:
    """After the test, no container its proxies labelled may remain (within a few seconds).

    Yields the set of sandbox owners to check (``make_proxy`` adds each proxy's): other
    processes sharing the engine (a second test session, a benchmark) have other owners, so
    their containers never fail this test.
    """
    owners: set[str] = set()
    before = {c["Id"] for c in managed_containers(docker_host)}
    yield owners
    deadline = time.monotonic() + 5
    while True:
        left = [
            c
            for c in managed_containers(docker_host)
            if c["Id"] not in before and (c.get("Labels") or {}).get(LABEL_OWNER) in owners
        ]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert left == [], f"containers left behind: {[c['Names'] for c in left]}"


@pytest.fixture
def anthropic() -> Iterator[tuple[ScriptedAnthropic, str]]:
    scripted = ScriptedAnthropic()
    with serve(scripted.app()) as url:
        yield scripted, url


@pytest.fixture
def responses() -> Iterator[tuple[ScriptedResponses, str]]:
    scripted = ScriptedResponses()
    with serve(scripted.app()) as url:
        yield scripted, url


@pytest.fixture
def gemini() -> Iterator[tuple[ScriptedGemini, str]]:
    scripted = ScriptedGemini()
    with serve(scripted.app()) as url:
        yield scripted, url


@pytest.fixture
def make_proxy(
    tmp_path: Path,
    docker_host: str,
    agent_cache: Path,
    anthropic: tuple[ScriptedAnthropic, str],
    responses: tuple[ScriptedResponses, str],
    gemini: tuple[ScriptedGemini, str],
    no_leftover_containers: set[str],
) -> ProxyFactory:
    @contextmanager
    def start(**overrides: Any) -> Iterator[str]:
        fields: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "upstream_url": "http://127.0.0.1:9/v1",
            "backend": "docker",
            "docker_host": docker_host,
            "agent_cache_dir": agent_cache,
            "default_image": TEST_IMAGE,
            "anthropic_base_url": anthropic[1],
            "anthropic_api_key": PROVIDER_KEY,
            "openai_base_url": responses[1] + "/v1",
            "openai_api_key": PROVIDER_KEY,
            "google_base_url": gemini[1],
            "google_api_key": PROVIDER_KEY,
            "keepalive_seconds": 15.0,
        }
        fields.update(overrides)
        settings = Settings(**fields)
        no_leftover_containers.add(sandbox_owner(settings))
        with serve(create_app(settings)) as url:
            yield url

    return start


def trajectory(proxy: str, collection: str, task: str, run_id: str) -> dict[str, Any]:
    response = httpx.get(f"{proxy}/api/v1/db/trajectory/{collection}/{task}/{run_id}")
    response.raise_for_status()
    record: dict[str, Any] = response.json()
    return record
