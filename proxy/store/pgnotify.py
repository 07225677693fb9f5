"""Changes told between processes on one PostgreSQL database: NOTIFY, and a LISTEN connection.

Notifications are payload-light: each names trajectories and what changed — their events
(``e``) or their records (``r``: status, session…) — never the change itself, which whoever
wakes reads from the tables, the truth. A payload is ``"<kind> <origin> <id>,<id>…"`` (a
batch of appends is one notification: PostgreSQL serialises the commits that notify);
``origin`` is the sending store's random id, so that a store does not wake its own waiters a
second time (it woke them when it wrote). Installations in other schemas of the same database
use other channels, one per schema.

PostgreSQL sends a notification when (and only if) the transaction that made it commits, to
every connection listening then. What is committed while a listener is not connected is never
told: `Listener` therefore says when it starts and stops hearing (`ChangeNotifier.hearing`),
so that waiters read again and poll meanwhile.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Mapping
from typing import Any, Literal

import anyio
import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from proxy.store.notify import ChangeNotifier

logger = logging.getLogger("proxy.store")

Kind = Literal["e", "r"]
EVENTS: Kind = "e"
RECORD: Kind = "r"
NOTIFY_SQL = "SELECT pg_notify(%s, %s)"
#: Trajectories named by one notification (a batch of appends names each of its own once).
MAX_IDS = 512
#: Waits between attempts to listen again: doubling from the first to the last.
_RETRY_FIRST, _RETRY_LAST = 0.5, 5.0


async def channel_of(conn: psycopg.AsyncConnection[Any]) -> str:
    """The channel of the installation whose schema ``conn`` uses (a valid identifier)."""
    cursor = conn.cursor(row_factory=tuple_row)
    await cursor.execute("SELECT current_schema()")
    row = await cursor.fetchone()
    schema = "" if row is None else str(row[0])
    return "jetty_proxy_" + hashlib.sha256(schema.encode()).hexdigest()[:16]


def payload(kind: Kind, origin: str, trajectory_ids: Collection[str]) -> str:
    """What changed, for ``trajectory_ids`` (at most `MAX_IDS`: 8-character ids fit a
    notification's 8,000 bytes many times over)."""
    if len(trajectory_ids) > MAX_IDS:
        raise ValueError(f"at most {MAX_IDS} trajectories per notification")
    return f"{kind} {origin} {','.join(sorted(trajectory_ids))}"


def deliver(notifier: ChangeNotifier, text: str, own_origin: str) -> None:
    """Pass one notification's payload on to ``notifier`` (another origin's, well formed)."""
    parts = text.split(" ")
    if len(parts) != 3 or parts[0] not in (EVENTS, RECORD) or parts[1] == own_origin:
        return
    for trajectory_id in parts[2].split(","):
        if trajectory_id:
            notifier.notify(trajectory_id, record=parts[0] == RECORD)


class Listener:
    """A connection of its own that LISTENs on the installation's channel, re-made after any
    failure (a doubling wait, 0.5 s to 5 s)."""

    def __init__(self, url: str, options: Mapping[str, Any], origin: str) -> None:
        self._url = url
        self._options = dict(options)
        self._origin = origin

    async def run(self, notifier: ChangeNotifier) -> None:
        """Until cancelled: hear other processes' notifications and pass them on."""
        wait = _RETRY_FIRST
        lost = False
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, **self._options
                ) as conn:
                    channel = await channel_of(conn)
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    notifier.hearing(True)
                    if lost:
                        logger.info("hearing other servers' changes again (LISTEN %s)", channel)
                    lost, wait = False, _RETRY_FIRST
                    async for notification in conn.notifies():
                        deliver(notifier, notification.payload, self._origin)
            except (psycopg.Error, OSError) as exc:
                if not lost:
                    logger.warning(
                        "not hearing other servers' changes (%s); polling until LISTEN is back",
                        exc,
                    )
                lost = True
            finally:
                notifier.hearing(False)
            await anyio.sleep(wait)
            wait = min(2 * wait, _RETRY_LAST)
