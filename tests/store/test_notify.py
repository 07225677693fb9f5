"""The in-process notifier wakes subscribers of one key only."""

from __future__ import annotations

import anyio
import pytest

from proxy.store.notify import ChangeNotifier

pytestmark = pytest.mark.anyio


async def test_notify_wakes_only_that_key() -> None:
    notifier = ChangeNotifier()
    with notifier.subscribe("a") as a, notifier.subscribe("b") as b:
        notifier.notify("a")
        assert await a.wait(1)
        assert not await b.wait(0.01)
    notifier.notify("a")  # nobody listening: nothing happens
    assert notifier._waiting == {}


async def test_wait_returns_when_woken_from_another_task() -> None:
    notifier = ChangeNotifier()
    with notifier.subscribe("k") as sub:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _later(notifier))
            with anyio.fail_after(2):
                assert await sub.wait(10)


async def _later(notifier: ChangeNotifier) -> None:
    await anyio.sleep(0.01)
    notifier.notify("k")


async def test_watchers_wake_for_record_changes_of_the_keys_they_want() -> None:
    notifier = ChangeNotifier()
    wanted = {"a"}
    with notifier.watch(wanted.__contains__) as watcher:
        notifier.notify("a")  # an event appended: followers only
        notifier.notify("b", record=True)  # not wanted
        assert not await watcher.wait(0.01)
        wanted.add("b")  # asked at notification time: keys wanted later count
        notifier.notify("b", record=True)
        assert await watcher.wait(1)
    assert notifier._watching == {}


async def test_a_record_change_wakes_its_followers_too() -> None:
    notifier = ChangeNotifier()
    with notifier.subscribe("a") as follower:
        notifier.notify("a", record=True)
        assert await follower.wait(1)


async def test_hearing_or_not_wakes_everyone_and_is_remembered_by_new_subscriptions() -> None:
    notifier = ChangeNotifier()
    with notifier.subscribe("a") as follower, notifier.watch(lambda _: False) as watcher:
        assert not follower.hears_others
        notifier.hearing(True)
        assert await follower.wait(1) and await watcher.wait(1)
    with notifier.subscribe("a") as follower:
        assert follower.hears_others
        notifier.hearing(False)
        assert await follower.wait(1)
    with notifier.subscribe("a") as follower:
        assert not follower.hears_others
