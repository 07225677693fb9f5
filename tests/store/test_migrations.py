"""Both engines, built through the migrations, hold the same schema.

Each database is described as the engines themselves report it (SQLite's pragmas, PostgreSQL's
catalogue): per table its columns (name, type, nullability, whether it has a default), primary
key, unique constraints, other indexes and foreign keys. Types are compared in SQLite's terms
(PostgreSQL's ``timestamptz`` and ``jsonb`` are SQLite's ``TEXT``, its ``boolean`` and
``bigint`` SQLite's ``INTEGER``), and a primary key column counts as not null on both.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from proxy.store import open_store
from proxy.store.migrations import MIGRATIONS, TYPES, migrations
from tests.support.stores import fresh_database

Column = tuple[str, bool, bool]  # type, nullable, has a default
ForeignKey = tuple[tuple[str, ...], str, tuple[str, ...], str]  # columns, table, columns, on delete

# PostgreSQL's types as the SQLite storage class that holds the same values.
_AS_SQLITE = {
    "text": "TEXT",
    "bigint": "INTEGER",
    "integer": "INTEGER",
    "boolean": "INTEGER",
    "double precision": "REAL",
    "bytea": "BLOB",
    "jsonb": "TEXT",
    "timestamp with time zone": "TEXT",
}


@dataclass
class Table:
    columns: dict[str, Column] = field(default_factory=dict)
    primary_key: tuple[str, ...] = ()
    unique: set[tuple[str, ...]] = field(default_factory=set)
    indexes: dict[str, tuple[tuple[str, ...], bool]] = field(default_factory=dict)
    foreign_keys: set[ForeignKey] = field(default_factory=set)


Schema = dict[str, Table]


def sqlite_schema(path: Path) -> Schema:
    schema: Schema = {}
    with sqlite3.connect(path) as conn:
        names = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
        for (name,) in names:
            table = schema[name] = Table()
            info = conn.execute(f"PRAGMA table_info({name})").fetchall()
            for _, column, kind, notnull, default, pk in info:
                table.columns[column] = (kind.upper(), not (notnull or pk), default is not None)
            table.primary_key = tuple(row[1] for row in sorted(info, key=lambda r: r[5]) if row[5])
            for _, index, unique, origin, _ in conn.execute(f"PRAGMA index_list({name})"):
                columns = tuple(row[2] for row in conn.execute(f"PRAGMA index_info({index})"))
                if origin == "u":
                    table.unique.add(columns)
                elif origin == "c":
                    table.indexes[index] = (columns, bool(unique))
            keys: dict[int, list[Any]] = {}
            for key, _, target, source, to, _, on_delete, _ in conn.execute(
                f"PRAGMA foreign_key_list({name})"
            ):
                keys.setdefault(key, []).append((source, target, to, on_delete))
            for parts in keys.values():
                table.foreign_keys.add(
                    (
                        tuple(p[0] for p in parts),
                        parts[0][1],
                        tuple(p[2] for p in parts),
                        parts[0][3].upper(),
                    )
                )
    return schema


_PG_COLUMNS = """
    SELECT table_name, column_name, data_type, is_nullable = 'YES',
           column_default IS NOT NULL AND is_identity = 'NO'
    FROM information_schema.columns WHERE table_schema = current_schema()
"""


def _names(attnums: str, relation: str) -> str:
    """SQL for the names of the columns ``attnums`` (an array) of ``relation``, in order."""
    return (
        f"ARRAY(SELECT a.attname FROM unnest({attnums}) WITH ORDINALITY AS k(attnum, n)"
        f" JOIN pg_attribute a ON a.attrelid = {relation} AND a.attnum = k.attnum ORDER BY k.n)"
    )


_PG_INDEXES = f"""
    SELECT t.relname, i.relname, x.indisunique, x.indisprimary,
           EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid
                   AND c.contype = 'u'),
           {_names("x.indkey", "t.oid")}
    FROM pg_index x
    JOIN pg_class t ON t.oid = x.indrelid
    JOIN pg_class i ON i.oid = x.indexrelid
    WHERE t.relnamespace = current_schema()::regnamespace
"""
_PG_FOREIGN_KEYS = f"""
    SELECT t.relname, r.relname, c.confdeltype,
           {_names("c.conkey", "c.conrelid")}, {_names("c.confkey", "c.confrelid")}
    FROM pg_constraint c
    JOIN pg_class t ON t.oid = c.conrelid
    JOIN pg_class r ON r.oid = c.confrelid
    WHERE c.contype = 'f' AND t.relnamespace = current_schema()::regnamespace
"""
_ON_DELETE = {
    "a": "NO ACTION",
    "r": "RESTRICT",
    "c": "CASCADE",
    "n": "SET NULL",
    "d": "SET DEFAULT",
}


def postgres_schema(url: str) -> Schema:
    schema: Schema = {}
    with psycopg.connect(url) as conn:
        for name, column, kind, nullable, default in conn.execute(_PG_COLUMNS):
            table = schema.setdefault(name, Table())
            table.columns[column] = (_AS_SQLITE.get(kind, str(kind)), nullable, default)
        for name, index, unique, primary, constraint, columns in conn.execute(_PG_INDEXES):
            table = schema[name]
            if primary:
                table.primary_key = tuple(columns)
            elif constraint:
                table.unique.add(tuple(columns))
            else:
                table.indexes[index] = (tuple(columns), unique)
        for name, target, on_delete, source, to in conn.execute(_PG_FOREIGN_KEYS):
            schema[name].foreign_keys.add((tuple(source), target, tuple(to), _ON_DELETE[on_delete]))
    return schema


def migrate(url: str) -> None:
    async def run() -> None:
        store = open_store(url)
        try:
            await store.migrate()
        finally:
            await store.close()

    anyio.run(run)


@pytest.fixture
def databases(tmp_path: Path) -> Any:
    """Both engines, migrated: the SQLite file and the PostgreSQL URL."""
    with (
        fresh_database("sqlite", tmp_path) as sqlite_url,
        fresh_database("postgres", tmp_path) as postgres_url,
    ):
        migrate(sqlite_url)
        migrate(postgres_url)
        yield Path(sqlite_url.removeprefix("sqlite:///")), postgres_url


@pytest.mark.postgres
def test_both_engines_hold_the_same_schema(databases: tuple[Path, str]) -> None:
    sqlite_path, postgres_url = databases
    sqlite, postgres = sqlite_schema(sqlite_path), postgres_schema(postgres_url)
    assert sqlite == postgres
    # The description is not empty-handed: it sees what the migrations made.
    assert set(sqlite) >= {"api_keys", "trajectories", "events", "files", "servers"}
    assert sqlite["events"].primary_key == ("trajectory_id", "seq")
    assert sqlite["files"].unique == {("id",), ("storage_path",)}
    assert sqlite["files"].indexes["files_collection"] == (("collection", "pk"), False)
    assert sqlite["events"].foreign_keys == {
        (("trajectory_id",), "trajectories", ("id",), "CASCADE")
    }
    assert sqlite["trajectories"].columns["session"] == ("TEXT", True, False)


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("engine", "change"),
    [
        ("sqlite", "ALTER TABLE trajectories ADD COLUMN note TEXT"),
        ("postgres", "ALTER TABLE trajectories ADD COLUMN note TEXT"),
        ("postgres", "ALTER TABLE trajectories ALTER COLUMN model SET NOT NULL"),
        ("postgres", "ALTER TABLE trajectories ALTER COLUMN error TYPE BIGINT USING 0"),
        ("sqlite", "CREATE INDEX trajectories_model ON trajectories (model)"),
        ("postgres", "ALTER TABLE labels ADD UNIQUE (value)"),
        ("sqlite", "CREATE TABLE extra (id TEXT PRIMARY KEY)"),
    ],
)
def test_a_change_to_one_engine_only_is_found(
    databases: tuple[Path, str], engine: str, change: str
) -> None:
    sqlite_path, postgres_url = databases
    if engine == "sqlite":
        with sqlite3.connect(sqlite_path) as conn:
            conn.execute(change)
    else:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(change)
    assert sqlite_schema(sqlite_path) != postgres_schema(postgres_url)


def test_each_engine_spells_every_placeholder() -> None:
    assert set(TYPES["sqlite"]) == set(TYPES["postgres"])
    for engine in TYPES:
        statements = [s for script in migrations(engine) for s in script]
        assert statements and not any("{" in s or "}" in s for s in statements)
    assert len(migrations("sqlite")) == len(migrations("postgres")) == len(MIGRATIONS)
