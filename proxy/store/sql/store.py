"""The whole SQL store: every part over one engine adapter."""

from __future__ import annotations

from proxy.store.sql.environment import EnvironmentPart
from proxy.store.sql.events import EventsPart
from proxy.store.sql.files import FilesPart
from proxy.store.sql.keys import KeysPart
from proxy.store.sql.quota import QuotaPart
from proxy.store.sql.servers import ServersPart
from proxy.store.sql.trajectories import TrajectoriesPart


class SQLStore(
    KeysPart, QuotaPart, TrajectoriesPart, EventsPart, FilesPart, EnvironmentPart, ServersPart
):
    """A :class:`~proxy.store.protocol.Store` over a :class:`~proxy.store.sql.database.Database`.

    Engines subclass it only to build their adapter; all behaviour is shared, so one
    contract test suite covers both. The parts repeat the protocol's signatures, not its
    documentation: the protocol is the contract (``tests/store/test_protocol.py`` holds them
    to it).
    """

    async def migrate(self) -> None:
        await self._db.migrate()

    async def ping(self) -> None:
        await self._db.fetchone("SELECT 1 AS one")

    async def close(self) -> None:
        await self._db.close()
