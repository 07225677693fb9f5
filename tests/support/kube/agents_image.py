"""The agents image the Kubernetes tests use: Claude Code only, busybox from the test image."""

from __future__ import annotations

import os
from pathlib import Path

import anyio

from proxy.agents import get_adapter
from proxy.agents.forwarder import ensure_forwarder
from proxy.agents.image import AgentsImage, build_agents_image
from proxy.agents.install import AgentCache
from proxy.environments.engine import ImageEngine
from tests.environments.conftest import require

BUSYBOX = "jetty-test/busybox:latest"
REPOSITORY = "jetty-test/agents"


def build_test_agents_image() -> str:
    """Build (or find, the engine's build cache makes it quick) the test agents image."""
    host = os.environ.get("JETTY_PROXY_DOCKER_HOST") or require("DOCKER_HOST")
    cache_dir = require("JETTY_PROXY_AGENT_CACHE_DIR")

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
