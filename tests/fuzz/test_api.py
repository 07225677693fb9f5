"""API fuzz run: requests generated from ``/openapi.json`` against a live proxy; no 5xx.

For every operation of the proxy's own description, schemathesis generates requests
that fit the description and requests that break it, and sends each to a real server
(uvicorn on loopback, SQLite, blobs on disk) with authentication on (a key for ``acme``)
and off (no keys, loopback). Each generated request is sent twice: as generated, and
with its collection, task and trajectory id replaced by those of a seeded trajectory
(completed, with artifacts, events and labels), so that the search also reaches past
the lookups. Every answer must be no server error, and every error must be
OpenAI-shaped (the description's ``ErrorBody``).

The number of examples per operation follows the Hypothesis profile (see conftest.py):
``HYPOTHESIS_PROFILE=long`` runs a much longer search.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance

from proxy.store import Store
from proxy.store.blobs import LocalBlobStore
from tests.support.stores import create_key, fresh_database, live_proxy, with_store

#: Examples per operation and server, in CI and with ``HYPOTHESIS_PROFILE=long``.
CI_EXAMPLES = 12
LONG_EXAMPLES = 400
CHECKS = [not_a_server_error, response_schema_conformance]


@dataclass(frozen=True)
class Target:
    url: str
    headers: dict[str, str]
    collection: str
    task: str
    trajectory_id: str


async def _bytes(content: bytes) -> AsyncIterator[bytes]:
    yield content


def _seed(database_url: str, data_dir: Path) -> str:
    blobs = LocalBlobStore(data_dir / "blobs")

    async def work(store: Store) -> str:
        trajectory = await store.create_trajectory(
            "acme", "nightly", agent="claude-code", jetty={"runbook": True}
        )
        for seq, kind in enumerate(["started", "text", "finished"], start=1):
            await store.append_event(trajectory.id, kind, {"seq": seq, "text": "ẞ\u202e<b>"})
        for path, content in [("summary.md", b"# Done\n"), ("out/data.json", b"{}")]:
            await store.add_artifact(
                trajectory.id, path, await blobs.put(_bytes(content)), "text/plain"
            )
        await store.set_label(trajectory.id, "reviewed", "yes", None)
        info = await blobs.put(_bytes(b"a,b\n1,2\n"))
        await store.add_file(
            "acme", "acme/data/table.csv", "table.csv", "user_data", info, "text/csv"
        )
        await store.update_trajectory(trajectory.id, status="completed")
        return trajectory.id

    return with_store(database_url, work)


@pytest.fixture(scope="module", params=["auth-on", "auth-off"])
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    root = tmp_path_factory.mktemp(request.param)
    with fresh_database("sqlite", root) as database_url:
        trajectory_id = _seed(database_url, root / "data")
        headers = {}
        if request.param == "auth-on":
            headers["authorization"] = f"Bearer {create_key(database_url, 'acme')}"
        with live_proxy(database_url, root / "data", backend="local") as url:
            yield Target(url, headers, "acme", "nightly", trajectory_id)


def _seeded(case: schemathesis.Case[Any], target: Target) -> bool:
    """Point ``case`` at the seeded trajectory; False when it already does or cannot."""
    known = {
        "collection": target.collection,
        "task": target.task,
        "trajectory_id": target.trajectory_id,
    }
    parameters = dict(case.path_parameters or {})
    seeded = {**parameters, **{k: v for k, v in known.items() if k in parameters}}
    if seeded == parameters:
        return False
    case.path_parameters = seeded
    return True


def test_no_request_from_the_description_is_a_server_error(target: Target) -> None:
    schema = schemathesis.openapi.from_url(target.url + "/openapi.json")
    examples = CI_EXAMPLES if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci" else LONG_EXAMPLES
    with requests.Session() as session:
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), result
            operation = result.ok()
            strategy = st.one_of(
                operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
                operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
            )

            @settings(
                max_examples=examples,
                suppress_health_check=list(HealthCheck),
            )
            @given(strategy)
            def check(case: schemathesis.Case[Any]) -> None:
                for _ in range(2):
                    response = case.call(
                        base_url=target.url, session=session, headers=target.headers, timeout=30
                    )
                    case.validate_response(response, checks=CHECKS)
                    if not _seeded(case, target):
                        break

            check()
