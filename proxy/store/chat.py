"""Recording relayed (passthrough) completions, each as a one-step trajectory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from proxy.store.protocol import Store
from proxy.store.records import NewTrajectory, Step, Trajectory

CHAT_TASK = "_chat"
CHAT_STEP = "chat"


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
    # What the completion cost (None: unknown), and the key that asked for it.
    cost_usd: float | None = None
    key_id: str | None = None

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

    def new_trajectory(self) -> NewTrajectory:
        return NewTrajectory(
            self.collection,
            self.task or CHAT_TASK,
            kind="chat",
            status=self.status,
            model=self.model,
            jetty=self.jetty,
            steps={CHAT_STEP: self.step()},
            usage=normalise_usage(self.usage),
            cost_usd=self.cost_usd,
            error=self.error,
            started_at=self.started,
            finished_at=self.ended,
            key_id=self.key_id,
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
    cost_usd: float | None = None,
    key_id: str | None = None,
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
        cost_usd=cost_usd,
        key_id=key_id,
    )
    return await _create(store, record)


async def record_chats(store: Store, records: Sequence[ChatRecord]) -> None:
    """Store many relayed completions, as :func:`record_chat` would store each, in one
    transaction: all of them or none (for SQLite one trip to its worker thread instead of one
    per record, and no rows read back). The caller retries or splits a batch that fails."""
    if records:
        await store.add_trajectories([record.new_trajectory() for record in records])


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
    new = record.new_trajectory()
    return await store.create_trajectory(
        new.collection,
        new.task,
        model=new.model,
        kind=new.kind,
        status=new.status,
        jetty=new.jetty,
        steps=new.steps,
        usage=new.usage,
        cost_usd=new.cost_usd,
        error=new.error,
        started_at=new.started_at,
        finished_at=new.finished_at,
        key_id=new.key_id,
    )
