"""What a test does when something it needs is missing: skip, except in CI, where it fails.

In CI (``CI=true``) ``scripts/ci/`` installs and starts everything the suite uses, so a missing
piece there is a broken set-up, never a reason to skip: see also the hook in
``tests/conftest.py`` that fails any test that would still skip under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(what: str, remedy: str) -> NoReturn:
    """Skip the calling test because ``what`` is missing; under ``CI=true`` fail it instead,
    saying how CI provides it (``remedy``)."""
    if in_ci():
        pytest.fail(f"CI=true but {what}; {remedy}")
    pytest.skip(what)


def require_bwrap() -> None:
    """Skip the calling test without bubblewrap (fail it under ``CI=true``)."""
    if shutil.which("bwrap") is None:
        unavailable("bubblewrap is not installed", "scripts/ci/bubblewrap.sh installs it")
