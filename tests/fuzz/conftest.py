"""Hypothesis profiles for the property and API fuzz tests.

``ci`` (the default) is deterministic and quick: a fixed derandomised search, no example
database, no deadline (timings are for benchmarks). ``HYPOTHESIS_PROFILE=long`` searches
much further, with fresh random examples each run::

    HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest -W error tests/fuzz
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=5000,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
