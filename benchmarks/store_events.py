"""Event-log benchmark: many runs appending events at once, on SQLite and PostgreSQL.

Creates ``--runs`` trajectories, then every run appends ``--events`` events concurrently
(each a text delta of ``--payload`` bytes, as an agent streaming its answer would), and
prints throughput (events/s) and the append latency distribution (p50, p99, max) per
engine. Afterwards it checks that every run's log is complete and gapless.

    python benchmarks/store_events.py [--runs 200] [--events 50] [--payload 120]
                                      [--postgres URL] [--pool 10]

PostgreSQL is measured when ``--postgres`` or ``JETTY_PROXY_TEST_DATABASE_URL`` gives a
database; the benchmark works in a temporary schema and drops it. Figures depend on the
machine; they are printed, not asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import psycopg
from psycopg import sql

from proxy.store import Store, open_store
from proxy.store.postgres import PostgresStore


@dataclass
class Result:
    engine: str
    events: int
    seconds: float
    latencies: list[float]
    complete: bool

    def report(self) -> str:
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (
            f"{self.engine:<10} {self.events:>7} events in {self.seconds:6.2f} s"
            f"  {self.events / self.seconds:9.0f} events/s"
            f"  append p50 {statistics.median(ordered) * 1000:7.2f} ms"
            f"  p99 {p99 * 1000:7.2f} ms  max {ordered[-1] * 1000:7.2f} ms"
            f"  logs {'complete' if self.complete else 'INCOMPLETE'}"
        )


async def run_benchmark(store: Store, engine: str, runs: int, events: int, payload: int) -> Result:
    await store.migrate()
    ids = [
        (await store.create_trajectory("bench", "events", status="running")).id for _ in range(runs)
    ]
    text = "x" * payload
    latencies: list[float] = []

    async def agent(trajectory_id: str) -> None:
        for n in range(events):
            started = time.perf_counter()
            await store.append_event(trajectory_id, "text_delta", {"text": text, "n": n})
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for trajectory_id in ids:
            tg.start_soon(agent, trajectory_id)
    elapsed = time.perf_counter() - started

    complete = True
    for trajectory_id in ids:
        logged = await store.events_after(trajectory_id)
        complete &= [e.seq for e in logged] == list(range(1, events + 1))
    return Result(engine, runs * events, elapsed, latencies, complete)


async def bench_sqlite(args: argparse.Namespace) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{Path(tmp) / 'bench.db'}")
        try:
            return await run_benchmark(store, "sqlite", args.runs, args.events, args.payload)
        finally:
            await store.close()


async def bench_postgres(args: argparse.Namespace, url: str) -> Result:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    scoped = urlunsplit(parts._replace(query=urlencode(query)))
    store = PostgresStore(scoped, max_connections=args.pool)
    try:
        engine = f"postgres/{args.pool}"
        return await run_benchmark(store, engine, args.runs, args.events, args.payload)
    finally:
        await store.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="concurrent runs (default 200)")
    parser.add_argument("--events", type=int, default=50, help="events per run (default 50)")
    parser.add_argument("--payload", type=int, default=120, help="text bytes per event")
    parser.add_argument("--postgres", default=os.environ.get("JETTY_PROXY_TEST_DATABASE_URL"))
    parser.add_argument("--pool", type=int, default=10, help="PostgreSQL pool size (default 10)")
    args = parser.parse_args()

    print(f"{args.runs} runs x {args.events} events, {args.payload}-byte payloads")
    print(anyio.run(bench_sqlite, args).report())
    if args.postgres:
        print(anyio.run(bench_postgres, args, args.postgres).report())
    else:
        print("postgres   skipped: give --postgres URL or JETTY_PROXY_TEST_DATABASE_URL")


if __name__ == "__main__":
    main()
