"""Schema migrations, one script per version and engine, applied in order at start.

Append new versions; never edit one that has shipped. Both engines keep the same version
numbers for the same change. Statements in a script are separated by ``;`` at the end of
a line. Conventions the shared SQL relies on: every table with a listing order has an
integer ``pk``; PostgreSQL path columns use the "C" collation so that ordering and
prefix matching agree with SQLite's byte order.
"""

from __future__ import annotations

SQLITE_MIGRATIONS: list[str] = [
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        key_hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        collections TEXT NOT NULL,
        admin INTEGER NOT NULL DEFAULT 0,
        name TEXT,
        created_at TEXT NOT NULL,
        revoked_at TEXT
    );
    CREATE INDEX api_keys_prefix ON api_keys (prefix)
    """,
    """
    CREATE TABLE trajectories (
        pk INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        collection TEXT NOT NULL,
        task TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        model TEXT,
        agent TEXT,
        jetty TEXT NOT NULL,
        environment TEXT NOT NULL,
        steps TEXT NOT NULL,
        usage TEXT,
        cost_usd REAL,
        error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        last_seq INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX trajectories_task ON trajectories (collection, task, pk);
    CREATE INDEX trajectories_status ON trajectories (collection, status, pk);
    CREATE TABLE events (
        trajectory_id TEXT NOT NULL REFERENCES trajectories (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        data TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (trajectory_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE labels (
        trajectory_id TEXT NOT NULL REFERENCES trajectories (id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        author TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (trajectory_id, key)
    );
    CREATE TABLE artifacts (
        trajectory_id TEXT NOT NULL REFERENCES trajectories (id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        content_type TEXT NOT NULL,
        blob_key TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (trajectory_id, path)
    );
    CREATE TABLE files (
        pk INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        collection TEXT NOT NULL,
        storage_path TEXT NOT NULL UNIQUE,
        filename TEXT NOT NULL,
        purpose TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        content_type TEXT NOT NULL,
        blob_key TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX files_collection ON files (collection, pk);
    CREATE INDEX files_collection_path ON files (collection, storage_path);
    CREATE TABLE collection_variables (
        collection TEXT NOT NULL,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (collection, name)
    );
    CREATE TABLE collection_secrets (
        collection TEXT NOT NULL,
        name TEXT NOT NULL,
        ciphertext BLOB NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (collection, name)
    )
    """,
    # 3: a run's conversation: the turn it continues and what it saved to be continued.
    """
    ALTER TABLE trajectories ADD COLUMN session TEXT
    """,
    # 4: serving processes and their heartbeats (which sandboxes still have a live owner).
    """
    CREATE TABLE servers (
        id TEXT PRIMARY KEY,
        heartbeat_at TEXT NOT NULL
    )
    """,
]

POSTGRES_MIGRATIONS: list[str] = [
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        key_hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        collections TEXT NOT NULL,
        admin BOOLEAN NOT NULL DEFAULT FALSE,
        name TEXT,
        created_at TIMESTAMPTZ NOT NULL,
        revoked_at TIMESTAMPTZ
    );
    CREATE INDEX api_keys_prefix ON api_keys (prefix)
    """,
    """
    CREATE TABLE trajectories (
        pk BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        collection TEXT NOT NULL,
        task TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        model TEXT,
        agent TEXT,
        jetty JSONB NOT NULL,
        environment JSONB NOT NULL,
        steps JSONB NOT NULL,
        usage JSONB,
        cost_usd DOUBLE PRECISION,
        error TEXT,
        created_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL,
        started_at TIMESTAMPTZ,
        finished_at TIMESTAMPTZ,
        last_seq BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX trajectories_task ON trajectories (collection, task, pk);
    CREATE INDEX trajectories_status ON trajectories (collection, status, pk);
    CREATE TABLE events (
        trajectory_id TEXT NOT NULL REFERENCES trajectories (id) ON DELETE CASCADE,
        seq BIGINT NOT NULL,
        type TEXT NOT NULL,
        data JSONB NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (trajectory_id, seq)
    );
    CREATE TABLE labels (
        trajectory_id TEXT NOT NULL REFERENCES trajectories (id) ON DELETE CASCADE,
        key TEXT COLLATE "C" NOT NULL,
        value TEXT NOT NULL,
        author TEXT,
        created_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (trajectory_id, key)
    );
    CREATE TABLE artifacts (
        trajectory_id TEXT NOT NULL REFERENCES trajectories (id) ON DELETE CASCADE,
        path TEXT COLLATE "C" NOT NULL,
        bytes BIGINT NOT NULL,
        sha256 TEXT NOT NULL,
        content_type TEXT NOT NULL,
        blob_key TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (trajectory_id, path)
    );
    CREATE TABLE files (
        pk BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        collection TEXT NOT NULL,
        storage_path TEXT COLLATE "C" NOT NULL UNIQUE,
        filename TEXT NOT NULL,
        purpose TEXT NOT NULL,
        bytes BIGINT NOT NULL,
        sha256 TEXT NOT NULL,
        content_type TEXT NOT NULL,
        blob_key TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX files_collection ON files (collection, pk);
    CREATE INDEX files_collection_path ON files (collection, storage_path);
    CREATE TABLE collection_variables (
        collection TEXT NOT NULL,
        name TEXT COLLATE "C" NOT NULL,
        value TEXT NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (collection, name)
    );
    CREATE TABLE collection_secrets (
        collection TEXT NOT NULL,
        name TEXT COLLATE "C" NOT NULL,
        ciphertext BYTEA NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (collection, name)
    )
    """,
    # 3: see SQLITE_MIGRATIONS[2].
    """
    ALTER TABLE trajectories ADD COLUMN session JSONB
    """,
    # 4: see SQLITE_MIGRATIONS[3].
    """
    CREATE TABLE servers (
        id TEXT PRIMARY KEY,
        heartbeat_at TIMESTAMPTZ NOT NULL
    )
    """,
]
