"""Shared fixtures. Async tests use anyio on asyncio (``@pytest.mark.anyio``)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# The browser fixtures (chromium, watched) for the page tests.
pytest_plugins = ("tests.support.browser",)
