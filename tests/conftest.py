"""Shared fixtures. Async tests use anyio on asyncio (``@pytest.mark.anyio``)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def agents_image() -> str:
    """An agents image with Claude Code, built once from the test agent cache on the engine.

    Its busybox comes from the offline busybox test image. Skips without an engine or cache,
    except under CI=true, where it fails.
    """
    from tests.support.kube.agents_image import build_test_agents_image

    return build_test_agents_image()
