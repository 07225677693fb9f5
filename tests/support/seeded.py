"""Runs written straight into a proxy's store and blobs, as its run engine would write them.

For tests of what reads runs (pages, links, the event stream) without starting an agent:
the proxy under test shares the SQLite file and the blob directory of its ``data_dir``. Every
call runs in a thread of its own, so it works from a test that drives a browser too.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio

from proxy.auth import hash_key, mint_key, printable_prefix
from proxy.store import Store, open_store
from proxy.store.blobs import LocalBlobStore
from proxy.store.content import detect_content_type
from proxy.store.records import TrajectoryStatus

T = TypeVar("T")


class Seeder:
    """Writes keys, runs, events and result files into the store under ``data_dir``."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir

    def key(self, *collections: str, admin: bool = False) -> str:
        secret = mint_key()

        async def create(store: Store) -> None:
            await store.create_key(
                hash_key(secret), printable_prefix(secret), tuple(collections), admin, None
            )

        self._run(create)
        return secret

    def run(
        self,
        collection: str = "acme",
        task: str = "analysis",
        *,
        status: TrajectoryStatus = "running",
        events: Sequence[Mapping[str, Any]] = (),
        agent: str = "claude-code",
        model: str = "claude-sonnet-4-6",
        session: Mapping[str, Any] | None = None,
    ) -> str:
        """A run (``pending``/``running``, or final with its times and usage) with its events."""

        async def create(store: Store) -> str:
            final = status not in ("pending", "running")
            trajectory = await store.create_trajectory(
                collection,
                task,
                model=model,
                agent=agent,
                status=status,
                environment={"image": "127.0.0.1:5000/jetty/testenv:bookworm", "backend": "local"},
                started_at=datetime.now(UTC),
                finished_at=datetime.now(UTC) if final else None,
                usage={"input_tokens": 11, "output_tokens": 13} if final else None,
                cost_usd=0.0123 if final else None,
                session=session,
            )
            for event in events:
                await store.append_event(trajectory.id, str(event["type"]), event)
            return trajectory.id

        return self._run(create)

    def events(self, run_id: str, *events: Mapping[str, Any]) -> None:
        async def append(store: Store) -> None:
            for event in events:
                await store.append_event(run_id, str(event["type"]), event)

        self._run(append)

    def finish(
        self,
        run_id: str,
        files: Mapping[str, bytes] | None = None,
        status: TrajectoryStatus = "completed",
    ) -> None:
        """Keep ``files`` as the run's results, then end it (in that order, as runs do)."""

        async def finish(store: Store) -> None:
            blobs = LocalBlobStore(self.data_dir / "blobs")
            for path, data in (files or {}).items():
                blob = await blobs.put(_chunks(data))
                await store.add_artifact(run_id, path, blob, detect_content_type(blob.head, path))
            await store.update_trajectory(
                run_id,
                status=status,
                finished_at=datetime.now(UTC),
                usage={"input_tokens": 11, "output_tokens": 13},
                cost_usd=0.0123,
            )

        self._run(finish)

    def _run(self, work: Callable[[Store], Awaitable[T]]) -> T:
        async def main() -> T:
            store = open_store(f"sqlite:///{self.data_dir / 'jetty-proxy.db'}")
            await store.migrate()
            try:
                return await work(store)
            finally:
                await store.close()

        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(anyio.run, main).result()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def text(value: str) -> dict[str, Any]:
    return {"type": "text_delta", "text": value}


def thinking(value: str) -> dict[str, Any]:
    return {"type": "reasoning_delta", "text": value}


def tool_call(call_id: str, command: str) -> dict[str, Any]:
    return {
        "type": "tool_call",
        "id": call_id,
        "name": "Bash",
        "input": {"command": command},
        "summary": command,
        "parent_id": None,
    }


def tool_result(call_id: str, output: str, *, is_error: bool = False) -> dict[str, Any]:
    return {
        "type": "tool_result",
        "id": call_id,
        "output": output,
        "is_error": is_error,
        "exit_code": 1 if is_error else 0,
        "parent_id": None,
    }


def progress(value: str) -> dict[str, Any]:
    return {"type": "progress", "text": value}
