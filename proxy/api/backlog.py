"""Records that a write could not store for now, kept in order until the next attempt."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

R = TypeVar("R")

#: The first retry comes this long after a failure; each failure doubles the wait, up to
#: the second figure.
FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 30.0


class Backlog(Generic[R]):
    """Records waiting for a database (or disk) that failed in a way that passes.

    Held in order, each with its size in bytes, up to ``limit_bytes``: past it the oldest go,
    reported to ``on_drop(reason, count)`` (and so counted and logged by its owner), never
    silently. Attempts are spaced by a doubling delay (:attr:`retry_at`), reset by a success.
    """

    def __init__(
        self,
        limit_bytes: int,
        on_drop: Callable[[str, int], None],
        *,
        first_delay: float = FIRST_RETRY_SECONDS,
        max_delay: float = MAX_RETRY_SECONDS,
    ):
        self._limit = limit_bytes
        self._on_drop = on_drop
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._items: deque[tuple[R, int]] = deque()
        self._bytes = 0
        self._delay = 0.0
        #: When the next attempt is due (monotonic seconds).
        self.retry_at = 0.0

    def __len__(self) -> int:
        return len(self._items)

    def keep(self, items: Sequence[tuple[R, int]], *, first: bool = False) -> None:
        """Hold ``items`` (after the others, or before them with ``first``); past the
        limit, drop the oldest."""
        if first:
            self._items.extendleft(reversed(items))
        else:
            self._items.extend(items)
        self._bytes += sum(size for _, size in items)
        dropped = 0
        while self._bytes > self._limit and self._items:
            _, size = self._items.popleft()
            self._bytes -= size
            dropped += 1
        if dropped:
            self._on_drop("backlog_full", dropped)

    def take(self, count: int) -> list[tuple[R, int]]:
        """The oldest ``count`` records, removed (put them back with ``keep(first=True)``)."""
        taken = [self._items.popleft() for _ in range(min(count, len(self._items)))]
        self._bytes -= sum(size for _, size in taken)
        return taken

    def drop_all(self, reason: str) -> None:
        if self._items:
            count = len(self._items)
            self._items.clear()
            self._bytes = 0
            self._on_drop(reason, count)

    def due(self, now: float) -> bool:
        return bool(self._items) and now >= self.retry_at

    def failed(self, now: float) -> None:
        """An attempt failed: the next one waits twice as long as the last."""
        self._delay = min(self._max_delay, self._delay * 2 or self._first_delay)
        self.retry_at = now + self._delay

    def succeeded(self) -> None:
        self._delay = 0.0
        self.retry_at = 0.0
