"""In-process change notifications, so followers of a live run wake as soon as it moves.

This is a latency optimisation only: it cannot see writes made by another process (several
proxies on one PostgreSQL) or from another thread's event loop, so followers also poll.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import anyio


class Subscription:
    """A registration for changes to one key; see :meth:`ChangeNotifier.subscribe`."""

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._thread = threading.get_ident()

    async def wait(self, seconds: float) -> bool:
        """Wait until a change is signalled or ``seconds`` pass; True when signalled.

        After a signal the subscription stays set: take a fresh one for the next wait.
        """
        with anyio.move_on_after(seconds):
            await self._event.wait()
        return self._event.is_set()

    def _wake(self) -> None:
        # anyio events are not thread-safe; a waiter on another thread's loop polls instead.
        if threading.get_ident() == self._thread:
            self._event.set()


class ChangeNotifier:
    """Maps keys (trajectory ids) to the subscriptions waiting on them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, set[Subscription]] = {}

    @contextmanager
    def subscribe(self, key: str) -> Iterator[Subscription]:
        """Register interest in ``key`` for the duration of the block.

        Subscribe *before* reading the state you are waiting to see change, so a change that
        lands between the read and the wait is not missed.
        """
        subscription = Subscription()
        with self._lock:
            self._waiting.setdefault(key, set()).add(subscription)
        try:
            yield subscription
        finally:
            with self._lock:
                waiting = self._waiting.get(key)
                if waiting is not None:
                    waiting.discard(subscription)
                    if not waiting:
                        del self._waiting[key]

    def notify(self, key: str) -> None:
        """Wake every subscription on ``key``."""
        with self._lock:
            waiting = list(self._waiting.get(key, ()))
        for subscription in waiting:
            subscription._wake()
