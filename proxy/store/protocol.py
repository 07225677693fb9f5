"""The store seam: what the rest of the proxy may ask of the database, as one Protocol.

This is the store's contract, written once: the one implementation (:mod:`proxy.store.sql`, on
SQLite or PostgreSQL) repeats only the signatures, and ``tests/store/test_protocol.py`` fails
when they drift. Errors are in :mod:`proxy.store.errors`; :func:`proxy.store.open_store` picks
the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Literal, Protocol

from proxy.store.notify import Subscription
from proxy.store.records import (
    ApiKey,
    Artifact,
    BlobInfo,
    CollectionEnvironment,
    Label,
    NewTrajectory,
    RateAdvance,
    RunGate,
    RunUsage,
    SpendEntry,
    Step,
    StoredEvent,
    StoredFile,
    Trajectory,
    TrajectoryKind,
    TrajectoryPage,
    TrajectoryStatus,
)


class KeyStore(Protocol):
    async def create_key(
        self,
        key_hash: str,
        prefix: str,
        collections: tuple[str, ...],
        admin: bool,
        name: str | None,
        limits: Mapping[str, Any] | None = None,
    ) -> ApiKey: ...

    async def find_key(self, key_hash: str) -> ApiKey | None:
        """The live (not revoked) key with this hash, if any."""

    async def list_keys(self) -> list[ApiKey]: ...

    async def revoke_key(self, key_id: str) -> bool:
        """Revoke by id or by printed prefix; False when nothing matched."""

    async def has_keys(self) -> bool:
        """True when at least one live key exists (authentication is then required)."""


class TrajectoryStore(Protocol):
    async def create_trajectory(
        self,
        collection: str,
        task: str,
        *,
        model: str | None = None,
        agent: str | None = None,
        jetty: Mapping[str, Any] | None = None,
        kind: TrajectoryKind = "run",
        status: TrajectoryStatus = "pending",
        environment: Mapping[str, Any] | None = None,
        steps: Mapping[str, Step] | None = None,
        usage: Mapping[str, Any] | None = None,
        cost_usd: float | None = None,
        error: str | None = None,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        session: Mapping[str, Any] | None = None,
        key_id: str | None = None,
    ) -> Trajectory:
        """Insert a trajectory with a fresh 8-hex id (unique across the store).

        ``jetty``, ``steps`` and ``error`` are redacted with the collection's secrets.
        """

    async def add_trajectories(self, items: Sequence[NewTrajectory]) -> None:
        """Insert many trajectories in one transaction (all or none), without reading them
        back: for records written in bulk, like relayed completions."""
        ...

    async def get_trajectory(self, trajectory_id: str) -> Trajectory | None: ...

    async def get_trajectories(self, trajectory_ids: Collection[str]) -> list[Trajectory]:
        """Those of ``trajectory_ids`` that exist, in one read (in no particular order)."""
        ...

    async def update_trajectory(
        self,
        trajectory_id: str,
        *,
        status: TrajectoryStatus | None = None,
        model: str | None = None,
        agent: str | None = None,
        environment: Mapping[str, Any] | None = None,
        steps: Mapping[str, Step] | None = None,
        usage: Mapping[str, Any] | None = None,
        cost_usd: float | None = None,
        error: str | None = None,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        session: Mapping[str, Any] | None = None,
    ) -> Trajectory:
        """Set the given fields (``None`` leaves a field as it is) and return the result.

        ``steps`` are merged by name into the existing ones. Raises :class:`RecordNotFound`.
        """

    async def transition(
        self,
        trajectory_id: str,
        status: TrajectoryStatus,
        *,
        allowed_from: Collection[TrajectoryStatus],
        finished_at: datetime | None = None,
    ) -> Trajectory | None:
        """Compare-and-set the status: only from one of ``allowed_from``; None otherwise."""

    async def list_trajectories(
        self,
        collection: str,
        task: str | None = None,
        *,
        status: TrajectoryStatus | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> TrajectoryPage:
        """Newest first."""

    async def live_trajectories(self) -> list[Trajectory]:
        """Every trajectory still ``pending`` or ``running``, in every collection (oldest first).

        For recovery after a restart; there are few of them.
        """
        ...

    async def set_label(
        self, trajectory_id: str, key: str, value: str, author: str | None
    ) -> Label:
        """Set (or replace) one label. Raises :class:`RecordNotFound`."""

    async def list_labels(self, trajectory_id: str) -> list[Label]: ...

    async def append_event(
        self, trajectory_id: str, event_type: str, data: Mapping[str, Any]
    ) -> int:
        """Append to the event log and return its ``seq``: 1, 2, 3… per trajectory, no gaps,
        safe under concurrent writers. ``data`` is redacted with the collection's secrets.
        Raises :class:`RecordNotFound`.
        """

    async def events_after(
        self, trajectory_id: str, after_seq: int = 0, *, limit: int | None = None
    ) -> list[StoredEvent]:
        """Events with ``seq > after_seq``, oldest first."""

    def subscribe(self, trajectory_id: str) -> AbstractContextManager[Subscription]:
        """Be woken when the trajectory changes: an event appended, its record updated. By
        this process; and, on PostgreSQL while `listen` runs, by any process on the database.
        Subscribe before reading, then wait (see `proxy.store.notify`)."""

    def subscribe_records(
        self, wanted: Callable[[str], bool]
    ) -> AbstractContextManager[Subscription]:
        """Be woken when the record (status, session…, not the events) of a trajectory for
        which ``wanted(trajectory_id)`` holds changes, here or, as for `subscribe`, elsewhere."""

    async def listen(self) -> None:
        """Until cancelled, hear the changes other processes on the database make and wake
        this process's subscribers (PostgreSQL: LISTEN/NOTIFY on a connection of its own,
        re-made after a failure). Returns at once on SQLite, which serves one process."""

    async def add_artifact(
        self, trajectory_id: str, path: str, blob: BlobInfo, content_type: str
    ) -> tuple[Artifact, str | None]:
        """Record (or replace) a results-dir file. Returns it and the blob key it replaced,
        which the caller should delete. Raises :class:`RecordNotFound`."""

    async def list_artifacts(self, trajectory_id: str) -> list[Artifact]:
        """Ordered by path."""

    async def get_artifact(self, trajectory_id: str, path: str) -> Artifact | None: ...


class FileStore(Protocol):
    async def add_file(
        self,
        collection: str,
        storage_path: str | None,
        filename: str,
        purpose: str,
        blob: BlobInfo,
        content_type: str,
    ) -> tuple[StoredFile, str | None]:
        """Record an upload under a fresh ``file-…`` id.

        ``storage_path`` (collection-prefixed) replaces any file already there; ``None``
        files it under ``<collection>/files/<id>/<filename>``. Returns the record and the
        blob key it replaced, which the caller should delete.
        """

    async def get_file(self, file_id: str) -> StoredFile | None: ...

    async def get_file_by_path(self, storage_path: str) -> StoredFile | None: ...

    async def list_files(
        self,
        collection: str,
        *,
        purpose: str | None = None,
        prefix: str | None = None,
        after: str | None = None,
        limit: int = 100,
        order: Literal["asc", "desc"] = "desc",
    ) -> list[StoredFile]:
        """By upload time (``order``); ``after`` is a file id, as OpenAI's cursor."""

    async def list_paths(
        self, collection: str, prefix: str, *, after: str | None = None, limit: int = 1000
    ) -> list[StoredFile]:
        """Files whose storage path starts with ``prefix``, by path; ``after`` is a path."""

    async def delete_file(self, file_id: str) -> StoredFile | None:
        """Delete the record and return it (the caller deletes its blob)."""


class CollectionStore(Protocol):
    async def get_environment(self, collection: str) -> CollectionEnvironment: ...

    async def update_environment(
        self,
        collection: str,
        *,
        variables: Mapping[str, str | None] | None = None,
        secrets: Mapping[str, str | None] | None = None,
    ) -> CollectionEnvironment:
        """Set (``str``) or delete (``None``) variables and secrets in one transaction.

        Secrets are sealed with the store's secret key before they reach the database.
        """

    async def secret_values(self, collection: str) -> dict[str, str]:
        """The collection's secrets in clear, for a sandbox's environment. Never render these."""


class ServerStore(Protocol):
    """Serving processes' heartbeats: the sandboxes of a server that stopped beating have no
    live owner any more, and another server may remove them (see `proxy.runs.engine`)."""

    async def beat(self, server_id: str) -> None:
        """Record that ``server_id`` is alive now (registering it on its first beat)."""

    async def live_servers(self, since: datetime) -> set[str]:
        """The servers that beat at ``since`` or later."""

    async def forget_server(self, server_id: str) -> None:
        """Remove ``server_id``'s record (it stopped cleanly)."""

    async def forget_servers_before(self, before: datetime) -> int:
        """Remove the records of servers silent since before ``before``; return how many."""


class QuotaStore(Protocol):
    """What limits are counted against (see `proxy.quota`): runs, spend, request rates, and
    the limits set at runtime. Scopes are ``collection:NAME`` or ``key:ID``."""

    async def create_run(self, new: NewTrajectory, gate: RunGate) -> Trajectory | None:
        """Insert the run ``new`` (as `create_trajectory` would) if, counting it, the gate's
        caps still hold; None (nothing inserted) otherwise. The check and the insert are one
        transaction that no other ``create_run`` on the database, from any process, runs
        beside: two servers cannot both take the last slot."""

    async def run_usage(
        self,
        since: datetime,
        *,
        collection: str | None = None,
        key_id: str | None = None,
        cap: int | None = None,
    ) -> RunUsage:
        """The live runs of ``collection`` (or of the key ``key_id``) and those created at
        ``since`` or later; with ``cap``, when that window next drops below it."""

    async def collection_limits(self) -> dict[str, dict[str, Any]]:
        """Every collection's limits set at runtime, by collection (few rows)."""

    async def update_collection_limits(
        self, collection: str, changes: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Set the given limits (``None``: remove one) and return the collection's."""

    async def add_spend(self, entries: Sequence[SpendEntry]) -> None:
        """Add each entry's dollars and calls to its scope's day, in one transaction."""

    async def spend_since(self, scopes: Collection[str], first_day: str) -> dict[str, float]:
        """Each scope's spend from ``first_day`` (an ISO date) on; scopes without any: 0."""

    async def advance_rates(self, advances: Sequence[RateAdvance]) -> dict[str, float]:
        """Move request-rate buckets on (created at ``floor + add``), in one transaction;
        return their new theoretical arrival times."""

    async def rate_times(self, scopes: Collection[str]) -> dict[str, float]:
        """The theoretical arrival times of the scopes' buckets that exist."""


class Store(
    KeyStore, TrajectoryStore, FileStore, CollectionStore, ServerStore, QuotaStore, Protocol
):
    """What the rest of the proxy may ask of the database."""

    async def migrate(self) -> None:
        """Create or upgrade the schema; safe to call on every start."""

    async def ping(self) -> None:
        """Raise :class:`StoreError` unless the database answers."""

    async def close(self) -> None: ...
