"""A run in progress, as its watchers see it: an ordered event list that can be followed."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from proxy.events import Event, Finished, Progress, ToolCall, ToolResult, Usage
from proxy.prices import CostTotal
from proxy.runs.redaction import LiveRedactor

RunOutcome = Literal["completed", "failed", "cancelled"]


@dataclass
class LiveRun:
    """Events of one run, kept in memory while it is live.

    The run lifecycle publishes; any number of followers (the chat response that
    started the run, a detached watcher) read from the start at their own pace.
    The durable copy of the same events is the store's event log. With a ``redactor``,
    followers see the collection's secrets replaced, also where a value is split across
    deltas (what it holds back is published before the next whole event, or at close).
    """

    run_id: str
    collection: str
    task: str
    agent: str
    model: str
    events: list[Event] = field(default_factory=list)
    outcome: RunOutcome | None = None
    error: str | None = None
    error_code: str | None = None
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    # The agent's own figures (its Usage events, e.g. Claude Code's total_cost_usd) …
    usage: Usage | None = None
    # … and what the proxy priced its model calls at (the run's cost).
    cost: CostTotal = field(default_factory=CostTotal)
    finished: Finished | None = None
    detached: bool = False
    redactor: LiveRedactor | None = None
    # The run's page (a signed link), so a client can open the run while it goes.
    page_url: str = ""
    # The tools started and not finished yet: id -> (name, when it started, monotonic).
    _open_tools: dict[str, tuple[str, float]] = field(default_factory=dict)
    _changed: anyio.Event = field(default_factory=anyio.Event)
    _cancel_scope: anyio.CancelScope | None = None
    _cancel_asked: bool = False

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def publish(self, event: Event) -> None:
        for shown in self.redactor.feed(event) if self.redactor else (event,):
            self.events.append(shown)
            if isinstance(shown, Usage):
                self.usage = shown if self.usage is None else self.usage + shown
            elif isinstance(shown, Finished):
                self.finished = shown
            elif isinstance(shown, ToolCall):
                self._open_tools[shown.id] = (shown.name, time.monotonic())
            elif isinstance(shown, ToolResult):
                self._open_tools.pop(shown.id, None)
        self._wake()

    def close(self, outcome: RunOutcome, error: str | None = None, code: str | None = None) -> None:
        """Mark the run over; followers drain what is left and stop."""
        if self.outcome is None:
            if self.redactor is not None:
                self.events += self.redactor.flush()
                error = self.redactor.redact(error) if error else error
                # Read by followers once the run is over (a result file may be named after one).
                self.artifacts = self.redactor.redact_value(self.artifacts)
            self.outcome, self.error, self.error_code = outcome, error, code
            self._wake()

    def cancel(self) -> None:
        """Ask the lifecycle to stop the run (it cleans up and then closes it)."""
        self._cancel_asked = True
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    @contextmanager
    def cancellable(self) -> Iterator[None]:
        """The block that `cancel` stops: the engine runs the run's lifecycle in it. A cancel
        asked for before the block began stops it at once."""
        with anyio.CancelScope() as scope:
            self._cancel_scope = scope
            if self._cancel_asked:
                scope.cancel()
            try:
                yield
            finally:
                self._cancel_scope = None

    async def follow(self, *, still_running: float = 0) -> AsyncGenerator[Event, None]:
        """Every event from the first, then live ones, until the run is over.

        With ``still_running`` (seconds), each time that long passes without an event while
        one of the agent's tools runs, a `Progress` line says so ("still running: Bash, 45 s"):
        chat UIs show it, so a long, silent step does not look like a hung run. The line is
        this follower's own: not published to others, not stored.
        """
        index = 0
        while True:
            while index < len(self.events):
                yield self.events[index]
                index += 1
            if self.done:
                return
            changed = self._changed
            if still_running <= 0:
                await changed.wait()
                continue
            with anyio.move_on_after(still_running):
                await changed.wait()
            if not changed.is_set() and self._open_tools:
                # The latest tool started: inside a sub-agent, the one that is running.
                name, started = next(reversed(self._open_tools.values()))
                yield Progress(f"still running: {name}, {int(time.monotonic() - started)} s")

    def meta(self) -> dict[str, Any]:
        """The run's identity, as it rides in the ``jetty`` object of chunks."""
        return {
            "trajectory_id": self.run_id,
            "collection": self.collection,
            "task": self.task,
            "agent": self.agent,
            **({"run_url": self.page_url} if self.page_url else {}),
        }

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
