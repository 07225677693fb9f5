"""What the store hands back: frozen records, one per table, free of any engine's types.

Timestamps are timezone-aware UTC datetimes; JSON columns come back as plain dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeAlias, get_args

TrajectoryStatus: TypeAlias = Literal[
    "pending", "running", "completed", "failed", "cancelled", "archived"
]
TRAJECTORY_STATUSES: frozenset[str] = frozenset(get_args(TrajectoryStatus))
#: Statuses a run never leaves on its own; ``archived`` is only ever set by a person.
FINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled", "archived"})

TrajectoryKind: TypeAlias = Literal["run", "chat"]


@dataclass(frozen=True)
class ApiKey:
    """A client key. The secret itself is never stored, only its SHA-256."""

    id: str
    prefix: str
    collections: tuple[str, ...]
    admin: bool
    created_at: datetime
    revoked_at: datetime | None = None
    name: str | None = None
    # The key's own limits (see proxy.quota), as stored: field name -> value.
    limits: Mapping[str, Any] | None = None

    def can_access(self, collection: str) -> bool:
        return self.admin or collection in self.collections


@dataclass(frozen=True)
class Step:
    """One named step of a trajectory, in the shape Jetty's trajectory records use."""

    inputs: Mapping[str, Any] = field(default_factory=dict)
    outputs: Mapping[str, Any] = field(default_factory=dict)
    activity: tuple[Mapping[str, Any], ...] = ()
    created: datetime | None = None
    ended: datetime | None = None
    duration_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": dict(self.inputs),
            "outputs": dict(self.outputs),
            "activity": [dict(item) for item in self.activity],
            "created": self.created.isoformat() if self.created else None,
            "ended": self.ended.isoformat() if self.ended else None,
            "duration_seconds": self.duration_seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Step:
        created, ended = data.get("created"), data.get("ended")
        return cls(
            inputs=dict(data.get("inputs") or {}),
            outputs=dict(data.get("outputs") or {}),
            activity=tuple(dict(item) for item in data.get("activity") or ()),
            created=datetime.fromisoformat(created) if created else None,
            ended=datetime.fromisoformat(ended) if ended else None,
            duration_seconds=data.get("duration_seconds"),
        )


@dataclass(frozen=True)
class Trajectory:
    """One run or one relayed completion, without its event log, labels or artifacts.

    ``jetty`` is the request's ``jetty`` block with secrets redacted; ``environment``
    records what the run actually used (image reference and digest, snapshot, limits).
    ``last_seq`` is the sequence number of the newest event (0 before the first).
    """

    id: str
    collection: str
    task: str
    kind: TrajectoryKind
    status: TrajectoryStatus
    created_at: datetime
    updated_at: datetime
    model: str | None = None
    agent: str | None = None
    jetty: Mapping[str, Any] = field(default_factory=dict)
    environment: Mapping[str, Any] = field(default_factory=dict)
    steps: Mapping[str, Step] = field(default_factory=dict)
    usage: Mapping[str, Any] | None = None
    cost_usd: float | None = None
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    last_seq: int = 0
    # Follow-up turns: the run this one continues, its conversation, what was saved to resume.
    session: Mapping[str, Any] | None = None
    # The key that started it (None: the local user, or a record from before keys were kept).
    key_id: str | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass(frozen=True)
class NewTrajectory:
    """A trajectory to insert in bulk (see ``Store.add_trajectories``); fields as in
    ``Store.create_trajectory``."""

    collection: str
    task: str
    kind: TrajectoryKind = "run"
    status: TrajectoryStatus = "pending"
    model: str | None = None
    agent: str | None = None
    jetty: Mapping[str, Any] | None = None
    environment: Mapping[str, Any] | None = None
    steps: Mapping[str, Step] | None = None
    usage: Mapping[str, Any] | None = None
    cost_usd: float | None = None
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    session: Mapping[str, Any] | None = None
    key_id: str | None = None


@dataclass(frozen=True)
class RunGate:
    """Caps a new run must keep, checked in the transaction that inserts it (see
    ``Store.create_run``): live runs (``pending``/``running``) and runs created since
    ``since``, of the collection and of the key ``key_id``. ``None`` caps nothing."""

    since: datetime
    collection_live: int | None = None
    collection_recent: int | None = None
    key_id: str | None = None
    key_live: int | None = None
    key_recent: int | None = None

    @property
    def caps(self) -> bool:
        return any(
            cap is not None
            for cap in (
                self.collection_live,
                self.collection_recent,
                self.key_live,
                self.key_recent,
            )
        )


@dataclass(frozen=True)
class RunUsage:
    """A collection's or a key's runs: how many are live, how many were created since a
    moment, and (when asked, with that many or more) when the next of them leaves the window."""

    live: int
    recent: int
    # When the window drops below the cap it was asked about: the oldest recent run that must
    # age out, by its creation time.
    slot_frees_at: datetime | None = None


@dataclass(frozen=True)
class SpendEntry:
    """Spend to add to a scope's day (``day`` is an ISO date, UTC)."""

    scope: str
    day: str
    usd: float
    calls: int = 1


@dataclass(frozen=True)
class RateAdvance:
    """A request-rate bucket moved on: its theoretical arrival time becomes
    ``max(current, floor) + add`` (seconds since the epoch)."""

    scope: str
    floor: float
    add: float


@dataclass(frozen=True)
class TrajectoryPage:
    """One page of a trajectory listing and the total count across all pages."""

    items: list[Trajectory]
    total: int


@dataclass(frozen=True)
class StoredEvent:
    """One entry of a trajectory's append-only event log; ``seq`` starts at 1, no gaps."""

    trajectory_id: str
    seq: int
    type: str
    data: Mapping[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class Label:
    key: str
    value: str
    author: str | None
    created_at: datetime


@dataclass(frozen=True)
class Artifact:
    """A file the run left in its results directory; ``path`` is relative to that directory."""

    trajectory_id: str
    path: str
    bytes: int
    sha256: str
    content_type: str
    blob_key: str
    created_at: datetime


@dataclass(frozen=True)
class BlobInfo:
    """What a blob store reports about a blob it has just written."""

    key: str
    size: int
    sha256: str
    #: The first bytes of the content, for content-type detection.
    head: bytes = b""


@dataclass(frozen=True)
class StoredFile:
    """An uploaded file: an OpenAI-style ``file-…`` id and a collection-prefixed storage path."""

    id: str
    collection: str
    storage_path: str
    filename: str
    purpose: str
    bytes: int
    sha256: str
    content_type: str
    blob_key: str
    created_at: datetime


@dataclass(frozen=True)
class CollectionEnvironment:
    """A collection's variables (readable) and the names of its secrets (values never leave)."""

    collection: str
    variables: Mapping[str, str]
    secret_names: tuple[str, ...]
