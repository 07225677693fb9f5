"""Shared fixtures. Async tests use anyio on asyncio (``@pytest.mark.anyio``).

Under ``CI=true`` no test may skip: a skip there is reported as a failure (see
``tests/support/ci.py``).
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.support.ci import in_ci


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        where = report.longrepr
        if isinstance(where, tuple):  # (path, line, "Skipped: reason")
            where = f"{where[0]}:{where[1]}: {where[2]}"
        report.outcome = "failed"
        report.longrepr = f"CI=true but the test skipped at {where}"
    return report


# The browser fixtures (chromium, watched) for the page tests.
pytest_plugins = ("tests.support.browser",)


@pytest.fixture(scope="session")
def agents_image() -> str:
    """An agents image with Claude Code, built once from the test agent cache on the engine.

    Its busybox comes from the offline busybox test image. Skips without an engine or cache,
    except under CI=true, where it fails.
    """
    from tests.support.kube.agents_image import build_test_agents_image

    return build_test_agents_image()
