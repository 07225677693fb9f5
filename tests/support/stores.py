"""Databases for tests: a fresh SQLite file, or a fresh schema on the test PostgreSQL.

PostgreSQL tests run when ``JETTY_PROXY_TEST_DATABASE_URL`` is set (``scripts/ci/postgres.sh``
starts a server and prints the ``export`` line). Elsewhere they skip — except under
``CI=true``, where a missing database is a failure, so CI cannot go green without testing
PostgreSQL.

Each PostgreSQL test gets its own schema (via ``search_path`` in the URL), dropped after.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import psycopg
import pytest
from psycopg import sql

from proxy.app import create_app
from proxy.auth import hash_key, mint_key, printable_prefix
from proxy.settings import Settings
from proxy.store import Store, open_store
from proxy.store.crypto import SecretBox
from tests.support.ci import unavailable
from tests.support.live import serve

POSTGRES_ENV = "JETTY_PROXY_TEST_DATABASE_URL"
ENGINES = (
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
)
#: A fixed key, so a test's store and the server it starts open each other's secrets.
TEST_SECRET_KEY = "R0Jgn1W8v6qJ1hQ7m3Zq4kXcPpYfD2sT9uVbNaLeWiE="

T = TypeVar("T")


def service_url(name: str, service: str) -> str:
    """The environment variable ``name`` that points the tests at ``service``, or skip
    (fail under CI, which must test every service) when it is not set."""
    url = os.environ.get(name)
    if url:
        return url
    unavailable(f"{name} is not set", f"CI must run the {service} tests (see scripts/ci/)")


def postgres_url() -> str:
    """The test PostgreSQL URL, or skip (fail under CI) when there is none."""
    return service_url(POSTGRES_ENV, "PostgreSQL")


@contextmanager
def fresh_database(engine: str, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database on ``engine`` for the duration of the block."""
    if engine == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'jetty-proxy.db'}"
        return
    base = postgres_url()
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield with_search_path(base, schema)
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def with_search_path(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query)))


@pytest.fixture(name="database_url", params=ENGINES)
def database_url_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, once per engine."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


def make_store(database_url: str) -> Store:
    """A store on ``database_url`` with the tests' secret key (call ``migrate`` first)."""
    return open_store(database_url, secret_box=SecretBox(TEST_SECRET_KEY))


def with_store(database_url: str, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``work`` on a fresh store instance from synchronous test code."""

    async def run() -> T:
        store = make_store(database_url)
        try:
            await store.migrate()
            return await work(store)
        finally:
            await store.close()

    return anyio.run(run)


def create_key(database_url: str, *collections: str, admin: bool = False) -> str:
    """Mint a client key in the database; returns the secret."""
    secret = mint_key()

    async def create(store: Store) -> Any:
        return await store.create_key(
            hash_key(secret), printable_prefix(secret), collections, admin, None
        )

    with_store(database_url, create)
    return secret


@contextmanager
def live_proxy(database_url: str, data_dir: Path, **overrides: Any) -> Iterator[str]:
    """A live proxy on ``database_url``; yields its base URL (without ``/v1``).

    The upstream is unreachable on purpose: these tests are about the proxy's own routes.
    """
    fields: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "upstream_url": "http://127.0.0.1:9/v1",
        "auth_cache_seconds": 0.0,
        "secret_key": TEST_SECRET_KEY,
        "events_poll_seconds": 0.05,
    }
    fields.update(overrides)
    with serve(create_app(Settings(**fields))) as url:
        yield url
