"""Fixtures for the sandbox tests, including the real Docker engine.

Docker tests (marked ``docker``) use the engine named by JETTY_PROXY_DOCKER_HOST, else
DOCKER_HOST, and the offline images built by scripts/ci/test-image.sh. Without a configured
engine they skip, except under CI=true, where a missing engine fails them. Their sandboxes carry
:data:`SESSION_LABEL` with this test session's :data:`SESSION`; after each Docker test, no such
container may remain beyond those that existed before it. Leaks are removed and fail the test;
other users of a shared engine (another test session, a running proxy) are left alone.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from lightkube import AsyncClient, KubeConfig

from proxy.sandbox.base import LABEL_MANAGED
from proxy.sandbox.docker import DockerBackend
from tests.support.ci import unavailable
from tests.support.kube.standin import KubeStandIn, kube_standin

BUSYBOX = "jetty-test/busybox:latest"
TESTENV = "127.0.0.1:5000/jetty/testenv:bookworm"
NO_ENGINE = "no Docker engine configured (JETTY_PROXY_DOCKER_HOST or DOCKER_HOST)"
SESSION_LABEL = "jetty-proxy.test-session"
SESSION = uuid.uuid4().hex
_MANAGED = json.dumps({"label": [f"{LABEL_MANAGED}=true", f"{SESSION_LABEL}={SESSION}"]})


def configured_docker_host() -> str | None:
    return os.environ.get("JETTY_PROXY_DOCKER_HOST") or os.environ.get("DOCKER_HOST") or None


def engine_client(host: str) -> httpx.Client:
    """A blocking client for test bookkeeping (checks and cleanup), outside the backend."""
    if host.startswith("unix://"):
        transport = httpx.HTTPTransport(uds=host.removeprefix("unix://"))
        return httpx.Client(transport=transport, base_url="http://docker/v1.41", timeout=30)
    base = "http://" + host.split("://", 1)[1]
    return httpx.Client(base_url=f"{base}/v1.41", timeout=30)


def managed_containers(client: httpx.Client) -> set[str]:
    response = client.get("/containers/json", params={"all": "1", "filters": _MANAGED})
    response.raise_for_status()
    return {container["Id"] for container in response.json()}


@pytest.fixture(scope="session")
def docker_host() -> str:
    """The engine for Docker tests: skip without one, fail under CI or when it is broken."""
    host = configured_docker_host()
    if host is None:
        unavailable(NO_ENGINE, "start one with scripts/ci/docker-engine.sh")
    try:
        with engine_client(host) as client:
            client.get("/_ping").raise_for_status()
            missing = [
                image
                for image in (BUSYBOX, TESTENV)
                if client.get(f"/images/{image}/json").status_code == 404
            ]
    except httpx.HTTPError as exc:
        pytest.fail(f"the Docker engine at {host} does not answer: {exc!r}")
    if missing:
        pytest.fail(f"test images missing on {host}: {missing}; run scripts/ci/test-image.sh")
    return host


@pytest.fixture
async def docker(docker_host: str) -> AsyncIterator[DockerBackend]:
    backend = DockerBackend.from_url(docker_host)
    yield backend
    await backend.aclose()


@pytest.fixture
def engine(docker_host: str) -> Iterator[httpx.Client]:
    with engine_client(docker_host) as client:
        yield client


@pytest.fixture(autouse=True)
def _no_leaked_containers(request: pytest.FixtureRequest) -> Iterator[None]:
    host = configured_docker_host()
    if request.node.get_closest_marker("docker") is None or host is None:
        yield
        return
    try:
        with engine_client(host) as client:
            before = managed_containers(client)
    except httpx.HTTPError:
        yield  # the docker_host fixture reports an engine that does not answer
        return
    yield
    with engine_client(host) as client:
        leaked = managed_containers(client) - before
        for container_id in leaked:
            client.delete(f"/containers/{container_id}", params={"force": "1"})
    assert not leaked, f"the test left {len(leaked)} managed container(s) behind"


@pytest.fixture
def kube(docker_host: str, tmp_path: Path) -> Iterator[KubeStandIn]:
    """A Kubernetes API stand-in whose Pods run on the test engine (see its module)."""
    registry = os.environ.get("JETTY_PROXY_TEST_REGISTRY")
    pull = (registry,) if registry else ()
    with kube_standin(docker_host, tmp_path, pull_registries=pull) as standin:
        yield standin


@pytest.fixture
async def kube_client(kube: KubeStandIn) -> AsyncIterator[AsyncClient]:
    """lightkube, the Kubernetes backend's client, configured for the stand-in."""
    client = AsyncClient(KubeConfig.from_file(kube.kubeconfig))
    yield client
    await client.close()
