"""What the command modules share."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import anyio

from proxy.settings import Settings
from proxy.store import Store, open_store

T = TypeVar("T")
Subcommands: TypeAlias = "argparse._SubParsersAction[Any]"
Handler: TypeAlias = Callable[[argparse.Namespace, Settings], int]


def with_store(settings: Settings, work: Callable[[Store], Awaitable[T]]) -> T:
    async def run() -> T:
        store = open_store(settings.database)
        try:
            await store.migrate()
            return await work(store)
        finally:
            await store.close()

    return anyio.run(run)


def megabytes(size: int) -> str:
    return f"{size / 1_000_000:.0f} MB"
