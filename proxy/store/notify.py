"""Change notifications, so that whoever waits on a trajectory wakes as soon as it moves.

A store notifies its `ChangeNotifier` of its own writes at once. Writes made by other
processes reach it only through the database: on PostgreSQL the store's listener
(`~proxy.store.protocol.Store.listen`, LISTEN/NOTIFY) passes them on, and says whether it is
hearing them (`ChangeNotifier.hearing`); SQLite hears nothing of other processes. Waiters
therefore still poll — often while other processes' writes go unheard, rarely while they are
heard — and a waiter on another thread's event loop always polls.

Two kinds of waiters: followers of one trajectory (`ChangeNotifier.subscribe`: its events or
its record changed) and watchers of records (`ChangeNotifier.watch`: the status, session… of
any trajectory they want changed; event appends do not wake them).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio


class Subscription:
    """One wait for a change; see `ChangeNotifier.subscribe` and `ChangeNotifier.watch`."""

    def __init__(self, *, hears_others: bool = False) -> None:
        self._event = anyio.Event()
        self._thread = threading.get_ident()
        #: Whether other processes' changes were being heard when the subscription was taken
        #: (if the listener stops hearing them, every subscription is woken).
        self.hears_others = hears_others

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
        self._watching: dict[Subscription, Callable[[str], bool]] = {}
        self._hearing = False

    @property
    def hears_others(self) -> bool:
        """Whether the changes other processes make are heard now (see `hearing`)."""
        return self._hearing

    @contextmanager
    def subscribe(self, key: str) -> Iterator[Subscription]:
        """Register interest in any change to ``key`` for the duration of the block.

        Subscribe *before* reading the state you are waiting to see change, so a change that
        lands between the read and the wait is not missed.
        """
        subscription = Subscription(hears_others=self._hearing)
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

    @contextmanager
    def watch(self, wanted: Callable[[str], bool]) -> Iterator[Subscription]:
        """Register interest in record changes of every key for which ``wanted(key)`` holds
        (asked when the change is notified, so keys wanted later count too)."""
        subscription = Subscription(hears_others=self._hearing)
        with self._lock:
            self._watching[subscription] = wanted
        try:
            yield subscription
        finally:
            with self._lock:
                self._watching.pop(subscription, None)

    def notify(self, key: str, *, record: bool = False) -> None:
        """Wake every subscription on ``key``; and, when its ``record`` changed (not only its
        events), every watcher that wants it."""
        with self._lock:
            waking = list(self._waiting.get(key, ()))
            watchers = list(self._watching.items()) if record else []
        waking += [subscription for subscription, wanted in watchers if wanted(key)]
        for subscription in waking:
            subscription._wake()

    def hearing(self, heard: bool) -> None:
        """The listener hears other processes' changes from now on (or no longer does): wake
        every subscription, so that each reads again what it may have missed meanwhile and
        waits afresh, polling as often as that now needs."""
        self._hearing = heard
        with self._lock:
            waking = [s for subscriptions in self._waiting.values() for s in subscriptions]
            waking += list(self._watching)
        for subscription in waking:
            subscription._wake()
