"""The agents image the Kubernetes tests use: Claude Code only, busybox from the test image."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from proxy.agents import get_adapter
from proxy.agents.forwarder import ensure_forwarder
from proxy.agents.image import AgentsImage, build_agents_image
from proxy.agents.install import AgentCache
from proxy.environments.engine import ImageEngine

BUSYBOX = "jetty-test/busybox:latest"
REPOSITORY = "jetty-test/agents"


def build_test_agents_image() -> str:
    """Build (or find, the engine's build cache makes it quick) the test agents image."""
    host = os.environ.get("JETTY_PROXY_DOCKER_HOST") or os.environ.get("DOCKER_HOST")
    cache_dir = os.environ.get("JETTY_PROXY_AGENT_CACHE_DIR")
    if not host or not cache_dir:
        message = "the agents image needs DOCKER_HOST and JETTY_PROXY_AGENT_CACHE_DIR"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {message} are not set (see scripts/ci/)")
        pytest.skip(message)

    async def build() -> str:
        cache = AgentCache(Path(cache_dir))
        installed = await cache.ensure(get_adapter("claude-code"))
        forwarder = await ensure_forwarder(cache.root)
        image = AgentsImage([installed], forwarder, base=BUSYBOX)
        tag = image.default_tag(REPOSITORY)
        images = ImageEngine.from_url(host)
        try:

            async def quiet(_: str) -> None:
                return None

            await build_agents_image(images, image, tag, quiet)
        finally:
            await images.aclose()
        return tag

    return anyio.run(build)
