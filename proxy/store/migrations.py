"""Schema migrations: one script per version, written once for both engines and applied in order
at start.

Append new versions; never edit one that has shipped. Statements in a script are separated by
``;`` at the end of a line. What the engines spell differently is written as a placeholder and
filled in by :func:`migrations` (a literal brace would be doubled)::

    {serial}         the integer primary key the database assigns (SQLite's rowid)
    {int}            a 64-bit integer
    {bool} {false}   a boolean, and its false
    {float}          a double
    {bytes}          binary
    {json}           a JSON document (SQLite: its text)
    {time}           a time with its zone (SQLite: fixed-width ISO text, so text order is time
                     order)
    {bytetext}       text that sorts and prefix-matches byte by byte (PostgreSQL: the "C"
                     collation; SQLite's own order is bytes)
    {without_rowid}  SQLite's clustered table for a primary key that is never a rowid

Conventions the shared SQL relies on: every table with a listing order has an integer ``pk``;
path and name columns that are listed in order or matched by prefix are ``{bytetext}``.
``tests/store/test_migrations.py`` builds both databases and compares what they hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

Engine = Literal["sqlite", "postgres"]

TYPES: Mapping[Engine, Mapping[str, str]] = MappingProxyType(
    {
        "sqlite": MappingProxyType(
            {
                "serial": "INTEGER PRIMARY KEY AUTOINCREMENT",
                "int": "INTEGER",
                "bool": "INTEGER",
                "false": "0",
                "float": "REAL",
                "bytes": "BLOB",
                "json": "TEXT",
                "time": "TEXT",
                "bytetext": "TEXT",
                "without_rowid": " WITHOUT ROWID",
            }
        ),
        "postgres": MappingProxyType(
            {
                "serial": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
                "int": "BIGINT",
                "bool": "BOOLEAN",
                "false": "FALSE",
                "float": "DOUBLE PRECISION",
                "bytes": "BYTEA",
                "json": "JSONB",
                "time": "TIMESTAMPTZ",
                "bytetext": 'TEXT COLLATE "C"',
                "without_rowid": "",
            }
        ),
    }
)

MIGRATIONS: tuple[str, ...] = (
    # 1: API keys.
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        key_hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        collections TEXT NOT NULL,
        admin {bool} NOT NULL DEFAULT {false},
        name TEXT,
        created_at {time} NOT NULL,
        revoked_at {time}
    );
    CREATE INDEX api_keys_prefix ON api_keys (prefix)
    """,
    # 2: trajectories, their events, labels and artifacts; files; collection environments.
    """
    CREATE TABLE trajectories (
        pk {serial},
        id TEXT NOT NULL UNIQUE,
        collection TEXT NOT NULL,
        task TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        model TEXT,
        agent TEXT,
        jetty {json} NOT NULL,
        environment {json} NOT NULL,
        steps {json} NOT NULL,
        usage {json},
        cost_usd {float},
        error TEXT,
        created_at {time} NOT NULL,
        updated_at {time} NOT NULL,
        started_at {time},
        finished_at {time},
        last_seq {int} NOT NULL DEFAULT 0
    );
    CREATE INDEX trajectories_task ON trajectories (collection, task, pk);
    CREATE INDEX trajectories_status ON trajectories (collection, status, pk);
    CREATE TABLE events (
        trajectory_id TEXT NOT NULL REFERENCES trajectories (id) ON DELETE CASCADE,
        seq {int} NOT NULL,
        type TEXT NOT NULL,
        data {json} NOT NULL,
        created_at {time} NOT NULL,
        PRIMARY KEY (trajectory_id, seq)
    ){without_rowid};
    CREATE TABLE labels (
        trajectory_id TEXT NOT NULL REFERENCES trajectories (id) ON DELETE CASCADE,
        key {bytetext} NOT NULL,
        value TEXT NOT NULL,
        author TEXT,
        created_at {time} NOT NULL,
        PRIMARY KEY (trajectory_id, key)
    );
    CREATE TABLE artifacts (
        trajectory_id TEXT NOT NULL REFERENCES trajectories (id) ON DELETE CASCADE,
        path {bytetext} NOT NULL,
        bytes {int} NOT NULL,
        sha256 TEXT NOT NULL,
        content_type TEXT NOT NULL,
        blob_key TEXT NOT NULL,
        created_at {time} NOT NULL,
        PRIMARY KEY (trajectory_id, path)
    );
    CREATE TABLE files (
        pk {serial},
        id TEXT NOT NULL UNIQUE,
        collection TEXT NOT NULL,
        storage_path {bytetext} NOT NULL UNIQUE,
        filename TEXT NOT NULL,
        purpose TEXT NOT NULL,
        bytes {int} NOT NULL,
        sha256 TEXT NOT NULL,
        content_type TEXT NOT NULL,
        blob_key TEXT NOT NULL,
        created_at {time} NOT NULL
    );
    CREATE INDEX files_collection ON files (collection, pk);
    CREATE INDEX files_collection_path ON files (collection, storage_path);
    CREATE TABLE collection_variables (
        collection TEXT NOT NULL,
        name {bytetext} NOT NULL,
        value TEXT NOT NULL,
        updated_at {time} NOT NULL,
        PRIMARY KEY (collection, name)
    );
    CREATE TABLE collection_secrets (
        collection TEXT NOT NULL,
        name {bytetext} NOT NULL,
        ciphertext {bytes} NOT NULL,
        updated_at {time} NOT NULL,
        PRIMARY KEY (collection, name)
    )
    """,
    # 3: a run's conversation: the turn it continues and what it saved to be continued.
    """
    ALTER TABLE trajectories ADD COLUMN session {json}
    """,
    # 4: serving processes and their heartbeats (which sandboxes still have a live owner).
    """
    CREATE TABLE servers (
        id TEXT PRIMARY KEY,
        heartbeat_at {time} NOT NULL
    )
    """,
    # 5: limits and what counts against them: who started a trajectory (runs are counted per
    # collection and per key), keys' and collections' limits, spend by day, request rates.
    """
    ALTER TABLE trajectories ADD COLUMN key_id TEXT;
    CREATE INDEX trajectories_created ON trajectories (collection, kind, created_at);
    CREATE INDEX trajectories_key_status ON trajectories (key_id, status);
    CREATE INDEX trajectories_key_created ON trajectories (key_id, kind, created_at);
    ALTER TABLE api_keys ADD COLUMN limits {json};
    CREATE TABLE collection_limits (
        collection TEXT PRIMARY KEY,
        limits {json} NOT NULL,
        updated_at {time} NOT NULL
    );
    CREATE TABLE spend_by_day (
        scope TEXT NOT NULL,
        day TEXT NOT NULL,
        usd {float} NOT NULL,
        calls {int} NOT NULL,
        PRIMARY KEY (scope, day)
    );
    CREATE TABLE rate_buckets (
        scope TEXT PRIMARY KEY,
        tat {float} NOT NULL
    )
    """,
)


def migrations(engine: Engine) -> list[list[str]]:
    """Each version's statements, in order, as ``engine`` spells them."""
    types = TYPES[engine]
    return [
        [statement for statement in script.format_map(types).split(";\n") if statement.strip()]
        for script in MIGRATIONS
    ]
