"""The proxy's own image (deploy/Dockerfile), built offline by scripts/ci/proxy-image.sh.

A container of it is started against the test PostgreSQL (on the host's loopback, so with the
host's network) and must answer ``/readyz``, relay one streamed completion from a scripted
upstream to the real ``openai`` client, run as its non-root user and report itself healthy
through the image's own HEALTHCHECK.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from openai import OpenAI

from tests.environments.conftest import require
from tests.sandbox.conftest import configured_docker_host, engine_client
from tests.support.live import free_port, serve
from tests.support.scripted_openai import ScriptedUpstream
from tests.support.stores import fresh_database

pytestmark = [pytest.mark.docker, pytest.mark.postgres]

# Bounds on waiting, so that a broken image fails instead of hanging.
_READY_SECONDS = 90
_HEALTHY_SECONDS = 90


@pytest.fixture
def proxy_container(tmp_path: Path) -> Iterator[tuple[str, str, ScriptedUpstream]]:
    """A running container of the image; yields its URL, its id and the scripted upstream."""
    image = require("JETTY_PROXY_TEST_PROXY_IMAGE")
    host = configured_docker_host() or require("DOCKER_HOST")
    upstream = ScriptedUpstream()
    port = free_port()
    with fresh_database("postgres", tmp_path) as database, serve(upstream.app()) as upstream_url:
        body = {
            "Image": image,
            "Env": [
                f"JETTY_PROXY_DATABASE_URL={database}",
                f"JETTY_PROXY_UPSTREAM_URL={upstream_url}/v1",
                "JETTY_PROXY_UPSTREAM_API_KEY=sk-upstream-secret",
                "JETTY_PROXY_HOST=127.0.0.1",
                f"JETTY_PROXY_PORT={port}",
                "JETTY_PROXY_BACKEND=local",
            ],
            "Cmd": ["serve"],
            # The image's own check, asked for more often than its 30 s.
            "Healthcheck": {"Interval": 500_000_000, "StartPeriod": 0},
            "HostConfig": {"NetworkMode": "host", "AutoRemove": False},
        }
        with engine_client(host) as engine:
            created = engine.post("/containers/create", json=body)
            created.raise_for_status()
            container = created.json()["Id"]
            try:
                engine.post(f"/containers/{container}/start").raise_for_status()
                yield f"http://127.0.0.1:{port}", container, upstream
            finally:
                logs = engine.get(
                    f"/containers/{container}/logs", params={"stdout": "1", "stderr": "1"}
                )
                print(logs.content.decode(errors="replace")[-4000:])
                engine.delete(f"/containers/{container}", params={"force": "1"})


def _wait_ready(url: str) -> None:
    async def poll() -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            with anyio.fail_after(_READY_SECONDS):
                while True:
                    try:
                        if (await client.get(f"{url}/readyz")).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.2)

    anyio.run(poll)


def test_the_image_serves_relays_and_is_healthy(
    proxy_container: tuple[str, str, ScriptedUpstream],
) -> None:
    url, container, upstream = proxy_container
    _wait_ready(url)
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="echo",
        stream=True,
        messages=[{"role": "user", "content": "hello from the image"}],
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "hello from the image"
    (seen,) = upstream.seen
    assert seen.headers["authorization"] == "Bearer sk-upstream-secret"

    host = configured_docker_host()
    assert host is not None
    with engine_client(host) as engine:

        async def healthy() -> dict[str, object]:
            with anyio.fail_after(_HEALTHY_SECONDS):
                while True:
                    info = engine.get(f"/containers/{container}/json").json()
                    if info["State"]["Health"]["Status"] == "healthy":
                        return dict(info)
                    await anyio.sleep(0.2)

        info = anyio.run(healthy)
    config = info["Config"]
    assert isinstance(config, dict)
    assert config["User"] == "10001:10001"
    with engine_client(host) as engine:
        top = engine.get(f"/containers/{container}/top").json()
    uid = top["Titles"].index("UID")
    users = {row[uid] for row in top["Processes"]}
    assert users == {"10001"}, top
