"""Soak benchmark: minutes of mixed traffic against one proxy process, watching for leaks.

Starts a scripted OpenAI upstream, a scripted Anthropic model and the proxy
(``python -m proxy serve``, local sandbox backend), each its own process, then for
``--minutes`` drives, all at once:

- streaming and non-streaming chat completions relayed to the upstream;
- streams the client drops after their first event (the upstream never finishes them);
- uploads (``/api/v1/sandbox/upload``), their downloads (checked byte for byte) and listings;
- runbook runs of the real Claude Code CLI on the local backend against the scripted model
  (when ``JETTY_PROXY_AGENT_CACHE_DIR`` holds it; ``--no-runs`` leaves them out): most run
  to the end and their artifact is downloaded, every third is dropped once it started. A
  finished run's sandbox is kept for a follow-up turn (one task each) for
  ``--keep-sandbox-seconds``, 20 here instead of the server's 600, so that kept sandboxes
  come and go within the run and their number levels off: with 600 it rises for ten minutes
  by design, which would read as a leak.

Every ``--interval`` seconds it samples the proxy's resident memory and open file
descriptors (from /proc) and its event loop's task count (``jetty_proxy_asyncio_tasks`` in
``/metrics``), and prints them with the requests done so far. At the end it compares the
median of the last third of the samples with that of the middle third (the first third is
warm-up) and prints a verdict per figure: ``flat``, or ``growing`` when the rise is more than
both a share and an absolute margin. It also samples once when the traffic has stopped and
the proxy is idle again. Figures are printed, not judged: exit status 0 unless the proxy died.

    python benchmarks/soak.py [--minutes 2] [--interval 5] [--streams 4] [--no-runs]
                              [--keep-sandbox-seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.live import free_port, wait_answering  # noqa: E402
from tests.support.scripted_anthropic import ScriptedAnthropic  # noqa: E402
from tests.support.scripted_openai import ScriptedUpstream  # noqa: E402

RUNBOOK = "# Soak\n\nWrite hello.txt into {{results_dir}}."
MESSAGES = [{"role": "user", "content": "the quick brown fox jumps over the lazy dog " * 8}]
UPLOAD_BYTES = 64 * 1024
#: A figure grows when its last third is above its middle third by more than both margins.
MARGINS = {"rss_mib": (0.05, 8.0), "fds": (0.10, 8.0), "tasks": (0.10, 10.0)}


@dataclass
class Tally:
    done: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)

    def total(self) -> int:
        return sum(self.done.values())


@dataclass(frozen=True)
class Sample:
    seconds: float
    requests: int
    rss_mib: float
    fds: int
    tasks: int


async def _relay_stream(client: httpx.AsyncClient, proxy: str) -> str:
    body = {"model": "echo", "stream": True, "messages": MESSAGES}
    async with client.stream("POST", proxy + "/v1/chat/completions", json=body) as response:
        text = (await response.aread()).decode()
    if response.status_code != 200 or not text.rstrip().endswith("data: [DONE]"):
        raise RuntimeError(f"stream answered {response.status_code}")
    return "stream"


async def _relay_json(client: httpx.AsyncClient, proxy: str) -> str:
    body = {"model": "echo", "messages": MESSAGES}
    response = await client.post(proxy + "/v1/chat/completions", json=body)
    if response.status_code != 200 or not response.json()["choices"]:
        raise RuntimeError(f"completion answered {response.status_code}")
    return "completion"


async def _disconnect(client: httpx.AsyncClient, proxy: str) -> str:
    body = {"model": "hang-after-first", "stream": True, "messages": MESSAGES}
    async with client.stream("POST", proxy + "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                return "disconnect"  # leaving the block closes the connection mid-stream
    raise RuntimeError(f"dropped stream answered {response.status_code} without an event")


async def _upload(client: httpx.AsyncClient, proxy: str) -> str:
    content = secrets.token_bytes(UPLOAD_BYTES)
    path = f"soak/{secrets.token_hex(4)}.bin"
    files = {"file": ("data.bin", content, "application/octet-stream")}
    response = await client.post(
        proxy + "/api/v1/sandbox/upload", files=files, data={"collection": "soak", "path": path}
    )
    if response.status_code != 201:
        raise RuntimeError(f"upload answered {response.status_code}")
    stored = response.json()["storage_path"]
    download = await client.get(f"{proxy}/api/v1/file/{stored}")
    if download.content != content:
        raise RuntimeError("a download differs from its upload")
    listing = await client.get(proxy + "/api/v1/list-files", params={"collection": "soak"})
    if listing.status_code != 200:
        raise RuntimeError(f"listing answered {listing.status_code}")
    return "upload+download"


async def _run(client: httpx.AsyncClient, proxy: str, drop: bool) -> str:
    body = {
        "model": "claude-sonnet-4-6",
        "stream": True,
        "messages": [
            {"role": "system", "content": RUNBOOK},
            {"role": "user", "content": "Execute the runbook."},
        ],
        "jetty": {"runbook": True, "collection": "soak", "task": "run", "timeout_sec": 120},
    }
    async with client.stream("POST", proxy + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"run answered {response.status_code}: {await response.aread()!r}")
        run_id = response.headers["x-jetty-trajectory-id"]
        status = "no final status"
        async for line in response.aiter_lines():
            if drop and "claude-code started" in line:
                return "run dropped"
            if line == "data: [DONE]":
                break
            if line.startswith("data: {"):
                chunk = json.loads(line.removeprefix("data: "))
                if "error" in chunk:
                    status = f"failed: {chunk['error'].get('message')}"
                elif (chunk.get("jetty") or {}).get("status"):
                    status = chunk["jetty"]["status"]
    if drop:
        raise RuntimeError("a run ended before it started")
    if status != "completed":
        raise RuntimeError(f"run {run_id} {status}")
    artifact = await client.get(f"{proxy}/api/v1/trajectory/soak/run/{run_id}/artifacts/hello.txt")
    if artifact.status_code != 200:
        raise RuntimeError(f"the run's artifact answered {artifact.status_code}")
    return "run"


async def _loop(
    deadline: float, tally: Tally, work: Callable[[], Awaitable[str]], pause: float = 0.0
) -> None:
    while time.monotonic() < deadline:
        try:
            tally.done[await work()] += 1
        except (httpx.HTTPError, RuntimeError, KeyError) as exc:
            tally.failed[f"{type(exc).__name__}: {exc}"[:120]] += 1
        if pause:
            await asyncio.sleep(pause)


def _sample(pid: int, started: float, tally: Tally, metrics: str) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = int(
        next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]
    )
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    tasks = next(
        float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("jetty_proxy_asyncio_tasks ")
    )
    return Sample(time.monotonic() - started, tally.total(), rss_kib / 1024, fds, int(tasks))


async def soak(proxy: str, pid: int, args: argparse.Namespace, runs: bool) -> list[Sample]:
    tally = Tally()
    started = time.monotonic()
    deadline = started + args.minutes * 60
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
    async with httpx.AsyncClient(timeout=180, limits=limits) as client:
        workers = [
            *(
                _loop(deadline, tally, lambda: _relay_stream(client, proxy))
                for _ in range(args.streams)
            ),
            _loop(deadline, tally, lambda: _relay_json(client, proxy)),
            _loop(deadline, tally, lambda: _disconnect(client, proxy), pause=0.05),
            _loop(deadline, tally, lambda: _upload(client, proxy)),
        ]
        if runs:
            count = iter(range(10**9))
            workers.append(
                _loop(deadline, tally, lambda: _run(client, proxy, next(count) % 3 == 2))
            )
        samples: list[Sample] = []

        async def sampler() -> None:
            while time.monotonic() < deadline:
                await asyncio.sleep(args.interval)
                metrics = (await client.get(proxy + "/metrics")).text
                sample = _sample(pid, started, tally, metrics)
                samples.append(sample)
                print(
                    f"{sample.seconds:>7.0f} {sample.requests:>9} {sample.rss_mib:>8.1f}"
                    f" {sample.fds:>6} {sample.tasks:>6}",
                    flush=True,
                )

        print(f"{'seconds':>7} {'requests':>9} {'RSS MiB':>8} {'fds':>6} {'tasks':>6}")
        await asyncio.gather(sampler(), *workers)
        print("done: " + ", ".join(f"{n} {kind}" for kind, n in sorted(tally.done.items())))
        for failure, n in tally.failed.most_common(10):
            print(f"failed {n}x: {failure}")
        await asyncio.sleep(args.interval)  # let the last runs and records settle
        idle = _sample(pid, started, tally, (await client.get(proxy + "/metrics")).text)
        print(
            f"idle after the traffic: RSS {idle.rss_mib:.1f} MiB, {idle.fds} fds,"
            f" {idle.tasks} tasks"
        )
    return samples


def verdict(samples: list[Sample]) -> list[str]:
    """One line per figure: the medians of the middle and last thirds, and flat or growing."""
    third = len(samples) // 3
    if third == 0:
        return ["verdict: too few samples (run longer or sample more often)"]
    middle, last = samples[third : 2 * third], samples[2 * third :]
    lines = []
    for name, (share, absolute) in MARGINS.items():
        before = statistics.median(getattr(s, name) for s in middle)
        after = statistics.median(getattr(s, name) for s in last)
        growing = after - before > max(absolute, share * before)
        lines.append(
            f"verdict {name}: {before:.1f} -> {after:.1f} ({after - before:+.1f}):"
            f" {'growing' if growing else 'flat'}"
        )
    return lines


def _serve(which: str, port: int) -> None:
    app = ScriptedUpstream().app() if which == "openai" else ScriptedAnthropic().app()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--streams", type=int, default=4, help="concurrent relayed streams")
    parser.add_argument("--no-runs", action="store_true", help="leave out runbook runs")
    parser.add_argument(
        "--keep-sandbox-seconds",
        type=float,
        default=20.0,
        help="how long a finished run's sandbox waits for a follow-up (the server's default"
        " is 600; each kept sandbox holds a task until then)",
    )
    parser.add_argument(
        "--serve", nargs=2, metavar=("openai|anthropic", "PORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve[0], int(args.serve[1]))
        return 0

    cache = os.environ.get("JETTY_PROXY_AGENT_CACHE_DIR")
    runs = not args.no_runs and bool(cache) and any(Path(cache or ".").glob("claude-code*"))
    openai_port, anthropic_port, proxy_port = free_port(), free_port(), free_port()
    servers = [
        subprocess.Popen([sys.executable, __file__, "--serve", "openai", str(openai_port)]),
        subprocess.Popen([sys.executable, __file__, "--serve", "anthropic", str(anthropic_port)]),
    ]
    with tempfile.TemporaryDirectory() as data_dir:
        env = {
            **os.environ,
            "JETTY_PROXY_UPSTREAM_URL": f"http://127.0.0.1:{openai_port}/v1",
            "JETTY_PROXY_ANTHROPIC_BASE_URL": f"http://127.0.0.1:{anthropic_port}",
            "JETTY_PROXY_ANTHROPIC_API_KEY": "sk-soak",
            "JETTY_PROXY_DATA_DIR": data_dir,
            "JETTY_PROXY_BACKEND": "local",
            "JETTY_PROXY_DEFAULT_IMAGE": "local",
            "JETTY_PROXY_KEEP_SANDBOX_SECONDS": f"{args.keep_sandbox_seconds:g}",
            "JETTY_PROXY_LOG_LEVEL": "warning",
        }
        proxy = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--port", str(proxy_port)],
            cwd=ROOT,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        servers.append(proxy)
        try:
            wait_answering(f"http://127.0.0.1:{openai_port}/v1/models", servers[0])
            wait_answering(f"http://127.0.0.1:{anthropic_port}/api/hello", servers[1])
            url = f"http://127.0.0.1:{proxy_port}"
            wait_answering(url + "/healthz", proxy)
            print(
                f"soak: {args.minutes:g} min of relayed streams ({args.streams} at a time),"
                " completions, dropped streams, uploads and downloads"
                + (", runbook runs (Claude Code, local backend)" if runs else ", no runs")
                + f"; one proxy process (pid {proxy.pid}); {os.cpu_count()} cores"
            )
            samples = asyncio.run(soak(url, proxy.pid, args, runs))
            for line in verdict(samples):
                print(line)
            if proxy.poll() is not None:
                print(f"the proxy exited with {proxy.returncode}", file=sys.stderr)
                return 1
        finally:
            for process in servers:
                process.terminate()
            for process in servers:
                process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
