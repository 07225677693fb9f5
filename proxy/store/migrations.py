"""Schema migrations, one script per version, applied in order at start.

Append new versions; never edit one that has shipped. Statements in a script
are separated by ``;`` at the end of a line.
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
]
