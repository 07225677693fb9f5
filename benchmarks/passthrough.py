"""Passthrough relay benchmark: the same streaming workload direct and through the proxy.

Starts a fast scripted upstream (its own process) and the proxy (``python -m proxy
serve``, one worker, its own process), then drives 200-chunk streaming completions
at several concurrency levels, first straight at the upstream, then through the
proxy, and prints what the proxy adds: time to first byte p50/p99, per-request
latency, relayed chunks per second, and the proxy's peak RSS.

    python benchmarks/passthrough.py [--chunks 200] [--levels 1,32,128] [--requests 400]

Figures depend on the machine; compare the two columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def upstream_app(chunks: int) -> Any:
    """A minimal ASGI upstream: every chat request streams ``chunks`` SSE events."""
    head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "b"}

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    body = [event({"role": "assistant", "content": ""})]
    body += [event({"content": f"tok{i} "}) for i in range(chunks - 2)]
    body += [event({}, "stop"), b"data: [DONE]\n\n"]
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/event-stream")],
    }

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send(start)
        for piece in body:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def serve_upstream(port: int, chunks: int) -> None:
    import uvicorn

    uvicorn.run(upstream_app(chunks), host="127.0.0.1", port=port, log_level="error")


@dataclass
class Sample:
    ttfb: float
    total: float
    chunks: int


async def _one(client: httpx.AsyncClient, url: str, payload: bytes) -> Sample:
    started = time.perf_counter()
    ttfb = 0.0
    count = 0
    async with client.stream("POST", url, content=payload) as response:
        response.raise_for_status()
        async for piece in response.aiter_raw():
            if not ttfb and b"data:" in piece:
                ttfb = time.perf_counter() - started
            count += piece.count(b"data: {")
    return Sample(ttfb, time.perf_counter() - started, count)


async def run_level(url: str, concurrency: int, requests: int) -> tuple[list[Sample], float]:
    payload = json.dumps(
        {"model": "bench", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    ).encode()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        for _ in range(min(concurrency, 8)):  # warm the connection pool
            await _one(client, url, payload)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(i)
        samples: list[Sample] = []

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                samples.append(await _one(client, url, payload))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return samples, time.perf_counter() - started


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _wait_http(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--levels", default="1,32,128")
    parser.add_argument("--requests", type=int, default=0, help="per level (default 20 x level)")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.chunks)
        return 0

    up_port, proxy_port = _free_port(), _free_port()
    upstream = subprocess.Popen(
        [sys.executable, __file__, "--serve-upstream", str(up_port), "--chunks", str(args.chunks)]
    )
    with tempfile.TemporaryDirectory() as data_dir:
        env = {
            **os.environ,
            "JETTY_PROXY_UPSTREAM_URL": f"http://127.0.0.1:{up_port}/v1",
            "JETTY_PROXY_DATA_DIR": data_dir,
            "JETTY_PROXY_LOG_LEVEL": "warning",
        }
        proxy = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--port", str(proxy_port)],
            cwd=ROOT,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_http(f"http://127.0.0.1:{up_port}/", upstream)
            _wait_http(f"http://127.0.0.1:{proxy_port}/healthz", proxy)
            direct_url = f"http://127.0.0.1:{up_port}/v1/chat/completions"
            proxy_url = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
            print(f"{args.chunks}-chunk streaming completions; one proxy worker; 2 cores shared")
            header = (
                f"{'conc':>5} {'path':>7} {'reqs':>6} {'TTFB p50':>9} {'TTFB p99':>9}"
                f" {'lat p50':>9} {'lat p99':>9} {'chunks/s':>10}"
            )
            print(header)
            for level in (int(x) for x in args.levels.split(",")):
                requests = args.requests or max(40, 20 * level)
                results = {}
                for name, url in (("direct", direct_url), ("proxy", proxy_url)):
                    samples, wall = asyncio.run(run_level(url, level, requests))
                    bad = [s for s in samples if s.chunks != args.chunks]
                    if bad:
                        raise RuntimeError(f"{name}: {len(bad)} responses lost chunks")
                    results[name] = samples, wall
                    ttfb = [s.ttfb * 1000 for s in samples]
                    lat = [s.total * 1000 for s in samples]
                    rate = sum(s.chunks for s in samples) / wall
                    print(
                        f"{level:>5} {name:>7} {len(samples):>6} {_pct(ttfb, 0.5):>8.2f}m"
                        f" {_pct(ttfb, 0.99):>8.2f}m {_pct(lat, 0.5):>8.2f}m"
                        f" {_pct(lat, 0.99):>8.2f}m {rate:>10,.0f}"
                    )
                direct, proxied = results["direct"][0], results["proxy"][0]
                added = {
                    "ttfb_p50": _pct([s.ttfb for s in proxied], 0.5)
                    - _pct([s.ttfb for s in direct], 0.5),
                    "ttfb_p99": _pct([s.ttfb for s in proxied], 0.99)
                    - _pct([s.ttfb for s in direct], 0.99),
                    "latency_p50": statistics.median(s.total for s in proxied)
                    - statistics.median(s.total for s in direct),
                }
                print(
                    f"{level:>5}   added  TTFB p50 {added['ttfb_p50'] * 1000:+.2f} ms,"
                    f" p99 {added['ttfb_p99'] * 1000:+.2f} ms;"
                    f" latency p50 {added['latency_p50'] * 1000:+.2f} ms"
                )
            print(f"proxy peak RSS: {_peak_rss_mib(proxy.pid):.1f} MiB")
        finally:
            proxy.terminate()
            upstream.terminate()
            proxy.wait(timeout=10)
            upstream.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
