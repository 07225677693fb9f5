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
