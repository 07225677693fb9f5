"""The server's rules for runs refuse before anything starts: images, resources, network.

Live proxies on both backends with an empty agent cache: a request that got past the checks
would install an agent and create a trajectory, so "nothing started" is visible as no trajectory
and no agent cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import ProxyFactory
from tests.api.test_providers import assert_nothing_started, run
from tests.support.ci import unavailable
from tests.support.openapi import validate

SERVER_ANTHROPIC_KEY = "sk-ant-server-key-0123456789"


def _docker_host() -> str:
    host = os.environ.get("JETTY_PROXY_DOCKER_HOST") or os.environ.get("DOCKER_HOST")
    if host:
        return host
    unavailable("DOCKER_HOST is not set", "start an engine with scripts/ci/docker-engine.sh")


@pytest.fixture
def agent_cache(tmp_path: Path) -> Path:
    return tmp_path / "agents"


@pytest.fixture(params=["local", pytest.param("docker", marks=pytest.mark.docker)])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "local":
        return {"backend": "local", "default_image": "local"}
    return {"backend": "docker", "docker_host": _docker_host()}


@pytest.fixture
def start(make_proxy: ProxyFactory, agent_cache: Path, backend: dict[str, Any]) -> ProxyFactory:
    def start(**overrides: Any) -> Any:
        fields = {
            "agent_cache_dir": agent_cache,
            "anthropic_api_key": SERVER_ANTHROPIC_KEY,
            **backend,
            **overrides,
        }
        return make_proxy(**fields)

    return start


def refused(response: httpx.Response, status: int, param: str, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["x-should-retry"] == "false"
    assert "x-jetty-trajectory-id" not in response.headers
    body: dict[str, Any] = response.json()
    validate("ErrorResponse", body)
    error = body["error"]
    assert (error["param"], error["code"]) == (param, code)
    message: str = error["message"]
    return message


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("jetty", "param"),
    [
        ({"image": "UPPER/case"}, "jetty.image"),
        ({"image": "Acme/env:v1"}, "jetty.image"),
        ({"base_image": "UPPER/case", "pip_packages": ["rich"]}, "jetty.base_image"),
    ],
)
def test_an_invalid_image_reference_is_a_400_before_anything_starts(
    start: ProxyFactory, agent_cache: Path, jetty: dict[str, Any], param: str, stream: bool
) -> None:
    with start() as proxy:
        message = refused(
            run(proxy, "claude-sonnet-4-6", stream=stream, **jetty), 400, param, "invalid_value"
        )
        assert "must be lowercase" in message
        assert_nothing_started(proxy, agent_cache)


def test_an_image_from_a_registry_not_allowed_is_a_400(
    start: ProxyFactory, agent_cache: Path
) -> None:
    allowed = {"image_registries": ["localhost:5000"], "default_image": "localhost:5000/a/b"}
    with start(**allowed) as proxy:
        message = refused(
            run(proxy, "claude-sonnet-4-6", image="ghcr.io/acme/env:v1"),
            400,
            "jetty.image",
            "invalid_value",
        )
        assert "registry 'ghcr.io' is not allowed on this server" in message
        assert_nothing_started(proxy, agent_cache)


def test_resources_over_the_servers_maximum_are_a_400(
    start: ProxyFactory, agent_cache: Path
) -> None:
    limits = {"run_memory_max": "2g", "run_memory_default": "1g", "run_cpus_max": 1.0}
    with start(**limits, run_cpus_default=1.0) as proxy:
        message = refused(
            run(proxy, "claude-sonnet-4-6", memory="3g"), 400, "jetty.memory", "invalid_value"
        )
        assert "over this server's maximum of 2 GiB" in message
        refused(run(proxy, "claude-sonnet-4-6", cpus=1.5), 400, "jetty.cpus", "invalid_value")
        assert_nothing_started(proxy, agent_cache)


@pytest.mark.parametrize("stream", [False, True])
def test_network_denied_for_the_collection_is_a_403_before_anything_starts(
    start: ProxyFactory, agent_cache: Path, stream: bool
) -> None:
    with start(network_policy="allowed", collections={"acme": {"network": "denied"}}) as proxy:
        response = run(proxy, "claude-sonnet-4-6", stream=stream, network_enabled=True)
        message = refused(response, 403, "jetty.network_enabled", "network_not_allowed")
        assert response.json()["error"]["type"] == "permission_error"
        assert "[collections.acme]" in message
        assert_nothing_started(proxy, agent_cache)


def test_network_is_denied_by_default(start: ProxyFactory, agent_cache: Path) -> None:
    with start() as proxy:
        runbook = "---\nnetwork_enabled: true\n---\n# Runbook\n\nFetch something."
        response = run(proxy, "claude-sonnet-4-6", runbook)
        refused(response, 403, "jetty.network_enabled", "network_not_allowed")
        assert_nothing_started(proxy, agent_cache)
