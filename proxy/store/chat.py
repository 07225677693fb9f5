"""Recording relayed (passthrough) completions, each as a one-step trajectory."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from proxy.store.base import Store, StoreError
from proxy.store.records import Step, Trajectory
from proxy.store.redact import redact, redact_value
from proxy.store.sql import SQLStore
from proxy.store.sql.database import DuplicateKey, Json, Statement, placeholders, utcnow

logger = logging.getLogger("proxy.store")

CHAT_TASK = "_chat"
CHAT_STEP = "chat"
_ID_ATTEMPTS = 8


@dataclass(frozen=True)
class ChatRecord:
    """One relayed completion, as it is recorded.

    ``usage`` is the upstream's OpenAI usage object. ``messages`` and ``content`` are kept
    only with ``keep_content`` (the ``record_chat_content`` setting); everything else —
    model, finish reason, usage, latency, upstream id — always is. ``ended`` is when the
    completion ended, which may be a while before it is written.
    """

    collection: str
    model: str
    status: Literal["completed", "failed", "cancelled"]
    duration_seconds: float
    task: str | None = None
    stream: bool = False
    upstream_id: str | None = None
    upstream_model: str | None = None
    finish_reason: str | None = None
    usage: Mapping[str, Any] | None = None
    first_byte_seconds: float | None = None
    status_code: int | None = None
    error: str | None = None
    messages: Sequence[Any] | None = None
    content: str | None = None
    keep_content: bool = False
    jetty: Mapping[str, Any] | None = None
    ended: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def started(self) -> datetime:
        return self.ended - timedelta(seconds=self.duration_seconds)

    def step(self) -> Step:
        inputs: dict[str, Any] = {"model": self.model, "stream": self.stream}
        outputs: dict[str, Any] = {
            "upstream_id": self.upstream_id,
            "model": self.upstream_model,
            "finish_reason": self.finish_reason,
            "usage": dict(self.usage) if self.usage is not None else None,
            "status_code": self.status_code,
            "first_byte_seconds": self.first_byte_seconds,
        }
        if self.keep_content:
            if self.messages is not None:
                inputs["messages"] = list(self.messages)
            if self.content is not None:
                outputs["content"] = self.content
        return Step(
            inputs=inputs,
            outputs=outputs,
            created=self.started,
            ended=self.ended,
            duration_seconds=self.duration_seconds,
        )


async def record_chat(
    store: Store,
    *,
    collection: str,
    model: str,
    status: Literal["completed", "failed", "cancelled"],
    duration_seconds: float,
    task: str | None = None,
    stream: bool = False,
    upstream_id: str | None = None,
    upstream_model: str | None = None,
    finish_reason: str | None = None,
    usage: Mapping[str, Any] | None = None,
    first_byte_seconds: float | None = None,
    status_code: int | None = None,
    error: str | None = None,
    messages: Sequence[Any] | None = None,
    content: str | None = None,
    keep_content: bool = False,
    jetty: Mapping[str, Any] | None = None,
) -> Trajectory:
    """Store one relayed completion under ``task`` (default ``_chat``), in one write.

    See :class:`ChatRecord` for the fields; :func:`record_chats` stores many at once.
    """
    record = ChatRecord(
        collection=collection,
        model=model,
        status=status,
        duration_seconds=duration_seconds,
        task=task,
        stream=stream,
        upstream_id=upstream_id,
        upstream_model=upstream_model,
        finish_reason=finish_reason,
        usage=usage,
        first_byte_seconds=first_byte_seconds,
        status_code=status_code,
        error=error,
        messages=messages,
        content=content,
        keep_content=keep_content,
        jetty=jetty,
    )
    return await _create(store, record)


async def record_chats(store: Store, records: Sequence[ChatRecord]) -> None:
    """Store many relayed completions, as :func:`record_chat` would store each.

    On the SQL store they go in one transaction: for SQLite one trip to its worker thread
    instead of one per record, and no rows read back. (A stopgap for a bulk insert in the
    store itself: this writes the columns that ``create_trajectory`` writes.) Should that
    fail, or on any other store, they are stored one by one; the first error is raised
    once all were tried.
    """
    if not records:
        return
    if _batches(store):
        assert isinstance(store, SQLStore)
        try:
            await _insert(store, records)
            return
        except Exception:
            logger.warning("a batch of chat records failed; storing them one by one", exc_info=True)
    failure: Exception | None = None
    for record in records:
        try:
            await _create(store, record)
        except Exception as exc:
            failure = failure or exc
    if failure is not None:
        raise failure


def normalise_usage(usage: Mapping[str, Any] | None) -> dict[str, int] | None:
    """OpenAI's usage object in the field names of agent runs' usage (``proxy.events.Usage``)."""
    if not usage:
        return None
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": _int(usage.get("prompt_tokens")),
        "output_tokens": _int(usage.get("completion_tokens")),
        "cache_read_tokens": _int(prompt_details.get("cached_tokens")),
        "cache_write_tokens": 0,
        "reasoning_tokens": _int(completion_details.get("reasoning_tokens")),
    }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


async def _create(store: Store, record: ChatRecord) -> Trajectory:
    return await store.create_trajectory(
        record.collection,
        record.task or CHAT_TASK,
        model=record.model,
        kind="chat",
        status=record.status,
        jetty=record.jetty,
        steps={CHAT_STEP: record.step()},
        usage=normalise_usage(record.usage),
        error=record.error,
        started_at=record.started,
        finished_at=record.ended,
    )


def _batches(store: Store) -> bool:
    """Whether :func:`_insert` writes what the store's own ``create_trajectory`` would."""
    return (
        isinstance(store, SQLStore)
        and type(store).create_trajectory is SQLStore.create_trajectory  # not replaced
    )


@dataclass(frozen=True)
class _Serialised(Json):
    """A JSON parameter serialised on the event loop, so that SQLite's worker thread, which
    holds the interpreter while it binds parameters, only has to pass the text on."""

    text: str = ""

    def dumps(self) -> str:
        return self.text


def _json(value: Any) -> Json:
    return _EMPTY if value == {} else _Serialised(value, Json(value).dumps())


_EMPTY = _Serialised({}, "{}")


_COLUMNS = (
    "collection",
    "task",
    "kind",
    "status",
    "model",
    "jetty",
    "environment",
    "steps",
    "usage",
    "error",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
)
_INSERT = (
    f"INSERT INTO trajectories (id, {', '.join(_COLUMNS)})"  # noqa: S608
    f" VALUES ({placeholders(len(_COLUMNS) + 1)})"
)


async def _insert(store: SQLStore, records: Sequence[ChatRecord]) -> None:
    hidden = {
        collection: await store._redaction_secrets(collection)
        for collection in {record.collection for record in records}
    }
    now = utcnow()
    rows = []
    for record in records:
        secrets_ = hidden[record.collection]
        usage = normalise_usage(record.usage)
        step = redact_value(record.step().to_dict(), secrets_, credential_fields=True)
        rows.append(
            (
                record.collection,
                record.task or CHAT_TASK,
                "chat",
                record.status,
                record.model,
                _json(redact_value(dict(record.jetty or {}), secrets_)),
                _json({}),
                _json({CHAT_STEP: step}),
                None if usage is None else _json(usage),
                None if record.error is None else redact(record.error, secrets_),
                now,
                now,
                record.started,
                record.ended,
            )
        )
    for _ in range(_ID_ATTEMPTS):
        # Fresh ids for every attempt: a collision (rare: 32 random bits) fails them all.
        statements: list[Statement] = [(_INSERT, (secrets.token_hex(4), *row)) for row in rows]
        try:
            await store._db.atomic(statements)
            return
        except DuplicateKey:
            continue
    raise StoreError("could not find free trajectory ids")
