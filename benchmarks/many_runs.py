"""Many runs at once: ``--runs`` concurrent runbook runs against one proxy process.

Starts a scripted Anthropic Messages model and the proxy (``python -m proxy serve``, Docker
backend, SQLite), each its own process, and sends ``--runs`` runbook requests at once: each
starts the real Claude Code CLI from the agent cache in its own container, makes three model
calls (a tool call that writes ``hello.txt`` into the results, a tool call that reads it, the
final answer) and leaves one result file, which the client then downloads. Every text the
model streams carries the moment it was sent (``@@t<monotonic ns>@@``, one clock for the
whole machine), so the client sees how long a model event takes to reach it through the
relay, the CLI, the container's log, the proxy's rendering and the client's stream.

Prints, for the batch: runs completed and failed (with why), wall time, the proxy's CPU
seconds per run (and how busy the whole machine was), its resident memory and event loop
tasks per live run (peak minus idle, over the most runs live at once), how long
``/healthz`` took meanwhile (the event loop's lag), p50/p99 from a model event at the
scripted server to its chunk at the client, and run events written to the store per
second. Then the same runs again, each client
disconnecting once its first model event arrived (mid-run): the containers of the proxy
left ``--settle`` seconds after the last disconnect (0 is right) and how the runs ended.

    JETTY_PROXY_DOCKER_HOST=unix:///… JETTY_PROXY_AGENT_CACHE_DIR=… \\
        python benchmarks/many_runs.py [--runs 50] [--settle 10] [--image REF]

A finished run's sandbox is not kept for a follow-up (``keep_sandbox_seconds = 0``): the
runs here have none, and each kept one would count as a container left.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.live import free_port, wait_answering  # noqa: E402
from tests.support.scripted_anthropic import ScriptedAnthropic  # noqa: E402

RUNBOOK = "# Many runs\n\nWrite hello.txt into /app/results, read it back, and say done."
COMMANDS = (
    "mkdir -p /app/results && echo 'hello from the agent' > /app/results/hello.txt",
    "cat /app/results/hello.txt",
)
MARK = re.compile(r"@@t(\d+)@@")
OWNER_LABEL = "jetty-proxy.owner"


class Stamped(ScriptedAnthropic):
    """Three calls per prompt (two tool calls, then the answer); every text is stamped with
    the monotonic clock when it is answered (the stream follows within microseconds)."""

    def _answer(self, messages: list[Any]) -> list[dict[str, Any]]:
        since = _since_prompt(messages)
        done = sum(_tool_results(message) for message in since)
        stamp = f"@@t{time.monotonic_ns()}@@"
        if done >= len(COMMANDS):
            return [{"type": "text", "text": f"Done {stamp}"}]
        return [
            {"type": "text", "text": f"Step {done + 1} {stamp}"},
            {
                "type": "tool_use",
                "id": f"toolu_{uuid.uuid4().hex[:24]}",
                "name": "Bash",
                "input": {"command": COMMANDS[done], "description": f"step {done + 1}"},
            },
        ]


def _blocks(message: Any) -> list[Any]:
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, list) else []


def _tool_results(message: Any) -> int:
    return sum(
        1 for b in _blocks(message) if isinstance(b, dict) and b.get("type") == "tool_result"
    )


def _since_prompt(messages: list[Any]) -> list[Any]:
    prompts = [
        index
        for index, m in enumerate(messages)
        if isinstance(m, dict)
        and m.get("role") == "user"
        and (isinstance(m.get("content"), str) or not _tool_results(m))
    ]
    return messages[prompts[-1] + 1 :] if prompts else messages


@dataclass
class Batch:
    """What one batch of runs saw, client side."""

    statuses: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    delays: list[float] = field(default_factory=list)  # model event → client chunk, seconds
    live: int = 0
    most_live: int = 0
    run_ids: list[str] = field(default_factory=list)


async def one_run(client: httpx.AsyncClient, proxy: str, batch: Batch, *, drop: bool) -> None:
    body = {
        "model": "claude-sonnet-4-6",
        "stream": True,
        "messages": [
            {"role": "system", "content": RUNBOOK},
            {"role": "user", "content": "Execute the runbook."},
        ],
        "jetty": {"runbook": True, "collection": "many", "task": "run", "timeout_sec": 600},
    }
    batch.live += 1
    batch.most_live = max(batch.most_live, batch.live)
    try:
        status = await _stream(client, proxy, body, batch, drop=drop)
        batch.statuses[status] += 1
    except (httpx.HTTPError, RuntimeError, KeyError) as exc:
        batch.failures[f"{type(exc).__name__}: {exc}"[:160]] += 1
    finally:
        batch.live -= 1


async def _stream(
    client: httpx.AsyncClient, proxy: str, body: dict[str, Any], batch: Batch, *, drop: bool
) -> str:
    seen: set[str] = set()
    text = ""
    status = "no final status"
    async with client.stream("POST", proxy + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"answered {response.status_code}: {(await response.aread())!r}")
        run_id = response.headers["x-jetty-trajectory-id"]
        batch.run_ids.append(run_id)
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                break
            if not line.startswith("data: {"):
                continue
            now = time.monotonic_ns()
            chunk = json.loads(line.removeprefix("data: "))
            if "error" in chunk:
                status = f"error: {chunk['error'].get('message')}"
            elif (chunk.get("jetty") or {}).get("status"):
                status = str(chunk["jetty"]["status"])
            for choice in chunk.get("choices") or []:
                text += (choice.get("delta") or {}).get("content") or ""
            for stamp in MARK.findall(text):
                if stamp not in seen:
                    seen.add(stamp)
                    batch.delays.append((now - int(stamp)) / 1e9)
                    if drop:
                        return "dropped"  # leaving the block closes the connection
            text = text[-64:]  # a stamp split across chunks is still found
    if drop:
        raise RuntimeError(f"run {run_id} ended before its first model event: {status}")
    if status != "completed":
        raise RuntimeError(f"run {run_id} {status}")
    artifact = await client.get(f"{proxy}/api/v1/trajectory/many/run/{run_id}/artifacts/hello.txt")
    if artifact.status_code != 200:
        raise RuntimeError(f"the artifact of {run_id} answered {artifact.status_code}")
    return status


@dataclass
class Usage:
    """The proxy process: CPU seconds so far, resident memory now."""

    cpu: float
    rss_mib: float


def usage(pid: int) -> Usage:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
    return Usage(ticks / os.sysconf("SC_CLK_TCK"), rss / 1024)


def machine_cpu() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def events_written(database: Path) -> int:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


def containers(docker_host: str, owner: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={OWNER_LABEL}={owner}"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "DOCKER_HOST": docker_host},
    ).stdout
    return out.split()


@dataclass
class Load:
    """The proxy while a batch ran, sampled every quarter second: its peak resident memory
    (MiB) and event loop tasks, and how long ``/healthz`` took to answer (seconds)."""

    rss_mib: float
    tasks: int = 0
    healthz: list[float] = field(default_factory=list)


async def batch_of(proxy: str, pid: int, runs: int, *, drop: bool) -> tuple[Batch, float, Load]:
    """Runs ``runs`` at once; the batch, its wall time and the proxy's load meanwhile."""
    batch = Batch()
    load = Load(usage(pid).rss_mib)
    limits = httpx.Limits(max_connections=runs * 2 + 8, max_keepalive_connections=runs)
    async with (
        httpx.AsyncClient(timeout=600, limits=limits) as client,
        httpx.AsyncClient(timeout=60) as probe,
    ):
        started = time.monotonic()
        work = asyncio.gather(*(one_run(client, proxy, batch, drop=drop) for _ in range(runs)))
        while not work.done():
            load.rss_mib = max(load.rss_mib, usage(pid).rss_mib)
            asked = time.monotonic()
            await probe.get(proxy + "/healthz")
            load.healthz.append(time.monotonic() - asked)
            metrics = (await probe.get(proxy + "/metrics")).text
            load.tasks = max(load.tasks, _tasks(metrics))
            await asyncio.wait([work], timeout=0.25)
        await work
        wall = time.monotonic() - started
    return batch, wall, load


def _tasks(metrics: str) -> int:
    line = next(
        line for line in metrics.splitlines() if line.startswith("jetty_proxy_asyncio_tasks ")
    )
    return int(float(line.split()[1]))


def quantile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def measure(proxy: str, pid: int, args: argparse.Namespace, data: Path, owner: str) -> None:
    database = data / "jetty-proxy.db"
    await asyncio.sleep(2)  # the proxy's start-up work (agent checks, recovery) is done
    idle, busy = usage(pid), machine_cpu()
    events_before = events_written(database)
    async with httpx.AsyncClient() as probe:
        idle_tasks = _tasks((await probe.get(proxy + "/metrics")).text)
    batch, wall, load = await batch_of(proxy, pid, args.runs, drop=False)
    after, busy = usage(pid), machine_cpu() - busy
    events = events_written(database) - events_before
    ok = batch.statuses["completed"]
    print(f"{args.runs} runs at once, one proxy process (pid {pid}), {os.cpu_count()} cores")
    print(f"completed {ok}, failed {args.runs - ok}")
    for failure, n in batch.failures.most_common(10):
        print(f"  failed {n}x: {failure}")
    print(f"wall time {wall:.1f} s")
    cpu = after.cpu - idle.cpu
    print(
        f"proxy CPU {cpu:.1f} s, {cpu / args.runs:.3f} s/run; the machine was busy"
        f" {busy / wall / (os.cpu_count() or 1):.0%} ({busy:.0f} CPU s, the proxy {cpu / busy:.0%})"
    )
    live = max(batch.most_live, 1)
    print(
        f"proxy RSS idle {idle.rss_mib:.0f} MiB, peak {load.rss_mib:.0f} MiB with"
        f" {batch.most_live} live: {(load.rss_mib - idle.rss_mib) / live:.2f} MiB per live run"
    )
    print(
        f"proxy tasks idle {idle_tasks}, peak {load.tasks}: {(load.tasks - idle_tasks) / live:.1f}"
        f" per live run; /healthz meanwhile p50 {quantile(load.healthz, 50) * 1000:.1f} ms,"
        f" max {max(load.healthz) * 1000:.1f} ms"
    )
    delays = [d * 1000 for d in batch.delays]
    print(
        f"model event -> client chunk: p50 {quantile(delays, 50):.0f} ms,"
        f" p99 {quantile(delays, 99):.0f} ms ({len(delays)} events,"
        f" {len(delays) / max(ok, 1):.1f} per run)"
    )
    print(f"events written {events}, {events / wall:.0f}/s ({events / args.runs:.0f} per run)")
    print(f"containers left after the batch: {len(containers(args.docker_host, owner))}")

    print()
    print(f"the same {args.runs}, every client disconnecting at its first model event")
    dropped, _, _ = await batch_of(proxy, pid, args.runs, drop=True)
    gone = dropped.statuses["dropped"]
    print(f"dropped {gone}, not dropped {args.runs - gone}")
    for failure, n in dropped.failures.most_common(10):
        print(f"  {n}x: {failure}")
    await asyncio.sleep(args.settle)
    left = containers(args.docker_host, owner)
    print(f"containers left {args.settle:g} s after the last disconnect: {len(left)}")
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        ids = dropped.run_ids
        rows = db.execute(
            f"SELECT status, count(*) FROM trajectories WHERE id IN ({','.join('?' * len(ids))})"
            " GROUP BY status",
            ids,
        ).fetchall()
    print("their runs: " + ", ".join(f"{n} {status}" for status, n in rows))


def _serve(port: int) -> None:
    uvicorn.run(Stamped().app(), host="127.0.0.1", port=port, log_level="warning")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after disconnects")
    parser.add_argument("--image", default="127.0.0.1:5000/jetty/testenv:bookworm")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve)
        return 0
    args.docker_host = os.environ.get("JETTY_PROXY_DOCKER_HOST") or os.environ.get("DOCKER_HOST")
    cache = os.environ.get("JETTY_PROXY_AGENT_CACHE_DIR")
    if not args.docker_host or not cache:
        print("set JETTY_PROXY_DOCKER_HOST and JETTY_PROXY_AGENT_CACHE_DIR", file=sys.stderr)
        return 2
    model_port, proxy_port = free_port(), free_port()
    model = subprocess.Popen([sys.executable, __file__, "--serve", str(model_port)])
    processes = [model]
    with tempfile.TemporaryDirectory() as data_dir:
        env = {
            **os.environ,
            "JETTY_PROXY_ANTHROPIC_BASE_URL": f"http://127.0.0.1:{model_port}",
            "JETTY_PROXY_ANTHROPIC_API_KEY": "sk-many",
            "JETTY_PROXY_DATA_DIR": data_dir,
            "JETTY_PROXY_BACKEND": "docker",
            "JETTY_PROXY_DOCKER_HOST": args.docker_host,
            "JETTY_PROXY_DEFAULT_IMAGE": args.image,
            "JETTY_PROXY_KEEP_SANDBOX_SECONDS": "0",
            "JETTY_PROXY_LOG_LEVEL": "warning",
        }
        env.pop("JETTY_PROXY_DATABASE_URL", None)
        proxy = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--port", str(proxy_port)],
            cwd=ROOT,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        processes.append(proxy)
        owner = _owner(Path(data_dir))
        try:
            wait_answering(f"http://127.0.0.1:{model_port}/api/hello", model)
            url = f"http://127.0.0.1:{proxy_port}"
            wait_answering(url + "/healthz", proxy)
            asyncio.run(measure(url, proxy.pid, args, Path(data_dir), owner))
            if proxy.poll() is not None:
                print(f"the proxy exited with {proxy.returncode}", file=sys.stderr)
                return 1
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=60)
    return 0


def _owner(data_dir: Path) -> str:
    """The owner label of the proxy's sandboxes (as `sandbox_owner` derives it)."""
    from proxy.runs.runtime import sandbox_owner
    from proxy.settings import Settings

    return sandbox_owner(Settings(data_dir=data_dir))


if __name__ == "__main__":
    sys.exit(main())
