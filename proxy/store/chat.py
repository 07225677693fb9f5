"""Recording a relayed (passthrough) completion as a one-step trajectory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from proxy.store.base import Store
from proxy.store.records import Step, Trajectory

CHAT_TASK = "_chat"
CHAT_STEP = "chat"


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

    ``usage`` is the upstream's OpenAI usage object. ``messages`` and ``content`` are kept
    only with ``keep_content`` (the ``record_chat_content`` setting); everything else —
    model, finish reason, usage, latency, upstream id — always is.
    """
    ended = datetime.now(UTC)
    started = ended - timedelta(seconds=duration_seconds)
    inputs: dict[str, Any] = {"model": model, "stream": stream}
    outputs: dict[str, Any] = {
        "upstream_id": upstream_id,
        "model": upstream_model,
        "finish_reason": finish_reason,
        "usage": dict(usage) if usage is not None else None,
        "status_code": status_code,
        "first_byte_seconds": first_byte_seconds,
    }
    if keep_content:
        if messages is not None:
            inputs["messages"] = list(messages)
        if content is not None:
            outputs["content"] = content
    step = Step(
        inputs=inputs,
        outputs=outputs,
        created=started,
        ended=ended,
        duration_seconds=duration_seconds,
    )
    return await store.create_trajectory(
        collection,
        task or CHAT_TASK,
        model=model,
        kind="chat",
        status=status,
        jetty=jetty,
        steps={CHAT_STEP: step},
        usage=normalise_usage(usage),
        error=error,
        started_at=started,
        finished_at=ended,
    )


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
