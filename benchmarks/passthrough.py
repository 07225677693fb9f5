"""Passthrough relay benchmark: the same streaming workload direct and through the proxy.

Starts a fast scripted upstream and the proxy (``python -m proxy serve``, one worker),
each in its own process, then drives streaming completions of ``--chunks`` SSE events
at several concurrency levels, first straight at the upstream, then through the proxy,
and prints what the proxy adds: time to first byte p50/p99, per-request latency,
chunks per second, the proxy's CPU time per relayed chunk and its peak RSS.

    python benchmarks/passthrough.py [--chunks 200] [--levels 1,32,128] [--requests N]
                                     [--clients 2] [--gap-ms 0] [--bare] [--limits]

The load comes from ``--clients`` separate processes (one at concurrency 1), each a
minimal HTTP/1.1 client on uvloop and httptools holding one keep-alive connection per
concurrent stream, so that the client, not the proxy, is cheap; the direct and proxied
runs use the same clients. The upstream writes every event as its own chunk, as a model
server does: all at once by default, or ``--gap-ms`` apart.

In a burst the proxy reads many events at once and passes them on together, so its client
has fewer, larger pieces to read than the upstream's own; on a machine where the client
competes for the cores, the proxied column can then beat the direct one. With a gap every
event crosses the proxy on its own, which shows its cost per event.

Each run starts once the upstream and the proxy are idle, and the CPU time of the process
measured counts until it is idle again: the proxy writes its records of the completions
after them (in batches), and that work belongs to its own run, not the next one.

The upstream stands in for a provider on another machine, whose CPU use would take
nothing from the client's or the relay's. At concurrency 1 there is a spare core, and the
upstream runs at idle priority (``SCHED_IDLE``), so that it uses only CPU the others leave:
run as a normal process, its 200 writes of a burst hold the core a woken client needs for
the rest of its time slice (up to ~2 ms), and that wait, not the relay, would decide every
relay's TTFB p99. At 32 and 128 every core is busy and an idle-priority upstream would
starve, so there it runs as a normal process. ``--upstream-cpu shared`` (or ``spare``)
sets one policy for all levels.

With ``--bare`` a third path runs too: a bare relay (a few lines on uvloop and httptools
that pass each read of the upstream's body on as one chunk, and do nothing else). It is
what any relay in the middle costs on this machine, before it does any work: where the
client, the relay and the upstream share a few cores, the client waits for a core more
often than when it talks to the upstream directly, and that shows in the TTFB p99 of
every relay.

With ``--limits`` a second proxy runs too, with a request rate and a budget configured for
every collection (both far above what the run uses, so nothing is refused): its ``limits +``
line is what checking limits adds to the relay, next to the plain proxy. The check itself is
also timed in-process (``Quotas.admit_request`` on a real store, with and without limits),
which is steadier than the difference of two runs.

Figures depend on the machine and on what else runs on it; compare the rows of one run,
not runs. The proxy's CPU per chunk is the least sensitive to a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httptools
import httpx
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.live import wait_answering  # noqa: E402

PAYLOAD = json.dumps(
    {"model": "bench", "stream": True, "messages": [{"role": "user", "content": "go"}]}
).encode()
EVENT_MARK = b"data: {"
WARMUP_REQUESTS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stream_frames(chunks: int) -> list[bytes]:
    """The upstream's response: a head, then one chunked-encoding frame per SSE event."""
    head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "b"}

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    events = [event({"role": "assistant", "content": ""})]
    events += [event({"content": f"tok{i} "}) for i in range(chunks - 2)]
    events += [event({}, "stop"), b"data: [DONE]\n\n"]
    start = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    frames = [b"%x\r\n%s\r\n" % (len(e), e) for e in events]
    return [start, *frames, b"0\r\n\r\n"]


class _Upstream(asyncio.Protocol):
    """One upstream connection: every request is answered with the scripted stream,
    its events ``gap`` seconds apart (0: all at once)."""

    def __init__(self, frames: Sequence[bytes], gap: float):
        self._frames = frames
        self._gap = gap
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.close()

    def on_message_complete(self) -> None:
        assert self._transport is not None
        if self._parser.get_method() != b"POST":
            self._transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            return
        # One write per event: each leaves as its own segment, as tokens from a model do.
        if not self._gap:
            for frame in self._frames:
                self._transport.write(frame)
            return
        self._transport.write(self._frames[0])
        self._write_from(1)

    def _write_from(self, index: int) -> None:
        assert self._transport is not None
        if index < len(self._frames) and not self._transport.is_closing():
            self._transport.write(self._frames[index])
            asyncio.get_running_loop().call_later(self._gap, self._write_from, index + 1)


def serve_upstream(port: int, chunks: int, gap: float) -> None:
    frames = stream_frames(chunks)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Upstream(frames, gap), "127.0.0.1", port, backlog=4096
        )
        await server.serve_forever()

    uvloop.run(serve())


class _BareOut(asyncio.Protocol):
    """The bare relay's connection to the upstream: every read goes out as one chunk."""

    def __init__(self, client: _BareIn):
        self._client = client
        self._parser = httptools.HttpResponseParser(self)
        self._pieces: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)
        if self._pieces:
            body = b"".join(self._pieces)
            self._pieces.clear()
            self._client.write(b"%x\r\n%s\r\n" % (len(body), body))

    def on_headers_complete(self) -> None:
        self._client.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )

    def on_body(self, body: bytes) -> None:
        self._pieces.append(body)

    def on_message_complete(self) -> None:
        if self._pieces:
            body = b"".join(self._pieces)
            self._pieces.clear()
            self._client.write(b"%x\r\n%s\r\n" % (len(body), body))
        self._client.write(b"0\r\n\r\n")
        self._parser = httptools.HttpResponseParser(self)


class _BareIn(asyncio.Protocol):
    """One client connection of the bare relay, with its own upstream connection."""

    def __init__(self, upstream: tuple[str, int]):
        self._upstream = upstream
        self._parser = httptools.HttpRequestParser(self)
        self._body: list[bytes] = []
        self._out: _BareOut | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self._body)
        self._body.clear()
        if self._parser.get_method() != b"POST":
            self.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            return
        request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: upstream\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        if self._out is not None and self._out.transport is not None:
            self._out.transport.write(request)
            return
        asyncio.get_running_loop().create_task(self._connect(request))

    async def _connect(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, self._out = await loop.create_connection(lambda: _BareOut(self), *self._upstream)
        assert self._out.transport is not None
        self._out.transport.write(request)


def serve_bare(port: int, upstream_port: int) -> None:
    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _BareIn(("127.0.0.1", upstream_port)), "127.0.0.1", port, backlog=4096
        )
        await server.serve_forever()

    uvloop.run(serve())


@dataclass
class Sample:
    ttfb: float
    total: float
    chunks: int
    status: int


class _Client(asyncio.Protocol):
    """One keep-alive connection that sends a request and reads the answer, repeatedly."""

    def __init__(self, request: bytes):
        self._request = request
        self._body: list[bytes] = []
        # Called by the parser for every chunk: a bare list.append keeps the client cheap
        # however finely the body is chunked, so that it does not favour either side.
        self.on_body: Callable[[bytes], None] = self._body.append
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._done: asyncio.Future[None] | None = None
        self._lost: BaseException | None = None
        self._started = self._ttfb = 0.0
        self._count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    @property
    def is_open(self) -> bool:
        return self._lost is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionResetError("the server closed the connection")
        if self._done is not None and not self._done.done():
            self._done.set_exception(self._lost)

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)
        self._first_event()

    def _first_event(self) -> None:
        if not self._ttfb and any(b"data:" in piece for piece in self._body):
            self._ttfb = time.perf_counter() - self._started

    def on_message_complete(self) -> None:
        assert self._done is not None
        self._first_event()  # the whole body may have come in one read
        self._count = b"".join(self._body).count(EVENT_MARK)
        self._body.clear()
        self._done.set_result(None)

    async def request(self) -> Sample:
        assert self._transport is not None
        if self._lost is not None:
            raise self._lost
        self._done = asyncio.get_running_loop().create_future()
        self._ttfb, self._count = 0.0, 0
        self._started = time.perf_counter()
        self._transport.write(self._request)
        await self._done
        total = time.perf_counter() - self._started
        return Sample(self._ttfb, total, self._count, self._parser.get_status_code())


class _Slot:
    """One concurrent stream's connection, reopened when the server closed it while idle."""

    def __init__(self, connect: Callable[[], Awaitable[_Client]]):
        self._connect = connect
        self._client: _Client | None = None

    async def request(self) -> Sample:
        if self._client is None or not self._client.is_open:
            self._client = await self._connect()
        return await self._client.request()


async def _drive(url: str, concurrency: int, requests: int) -> dict[str, Any]:
    """Warm up, say ``ready``, wait for ``go`` on stdin, run, return the samples."""
    target = httpx.URL(url)
    host, port = target.host, target.port or 80
    request = (
        b"POST %s HTTP/1.1\r\nhost: %s:%d\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s"
        % (target.raw_path, host.encode(), port, len(PAYLOAD), PAYLOAD)
    )
    loop = asyncio.get_running_loop()

    async def connect() -> _Client:
        _, client = await loop.create_connection(lambda: _Client(request), host, port)
        return client

    slots = [_Slot(connect) for _ in range(concurrency)]

    async def warm(slot: _Slot) -> None:
        for _ in range(WARMUP_REQUESTS):
            await slot.request()

    await asyncio.gather(*(warm(slot) for slot in slots))
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)

    remaining = [requests]
    samples: list[Sample] = []

    async def worker(slot: _Slot) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            samples.append(await slot.request())

    started = time.perf_counter()
    await asyncio.gather(*(worker(slot) for slot in slots))
    return {
        "wall": time.perf_counter() - started,
        "samples": [[s.ttfb, s.total, s.chunks, s.status] for s in samples],
    }


def drive(url: str, concurrency: int, requests: int, output: Path) -> None:
    result = uvloop.run(_drive(url, concurrency, requests))
    output.write_text(json.dumps(result))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_idle(pid: int, timeout: float = 10.0) -> None:
    """Wait until ``pid`` has used no CPU for a while: a proxy writes the records of the
    completions it relayed after them, and that work must neither be missed by its own
    figures nor land on the next run's."""
    tick = 1 / os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + timeout
    last, quiet = _cpu_seconds(pid), 0
    while quiet < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
        now = _cpu_seconds(pid)
        quiet = quiet + 1 if now - last <= tick else 0
        last = now


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_level(
    url: str, concurrency: int, requests: int, clients: int, watched: int, idle: Sequence[int]
) -> tuple[list[Sample], float, float]:
    """Samples, wall time and the CPU seconds ``watched`` spent, over ``clients`` processes.

    The run starts once the processes ``idle`` are idle; ``watched``'s CPU is counted
    until it is idle again after the run.
    """
    processes = min(clients, concurrency)
    drivers = []
    outputs = [Path(tempfile.mkstemp(suffix=".json")[1]) for _ in range(processes)]
    for i, output in enumerate(outputs):
        share = concurrency // processes + (i < concurrency % processes)
        quota = requests // processes + (i < requests % processes)
        drivers.append(
            subprocess.Popen(
                [sys.executable, __file__, "--drive", url, str(share), str(quota), str(output)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for driver in drivers:
            assert driver.stdout is not None
            if driver.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a load process failed to start against {url}")
        for pid in idle:
            _wait_idle(pid)
        cpu_before = _cpu_seconds(watched)
        for driver in drivers:
            assert driver.stdin is not None
            driver.stdin.write("go\n")
            driver.stdin.flush()
        for driver in drivers:
            if driver.wait() != 0:
                raise RuntimeError(f"a load process failed against {url}")
        _wait_idle(watched)
        cpu = _cpu_seconds(watched) - cpu_before
        results = [json.loads(output.read_text()) for output in outputs]
    finally:
        for driver in drivers:
            driver.kill()
            driver.wait()
        for output in outputs:
            output.unlink()
    samples = [Sample(*row) for result in results for row in result["samples"]]
    return samples, max(result["wall"] for result in results), cpu


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _print_row(level: int, name: str, samples: list[Sample], wall: float, cpu: float) -> None:
    chunks = sum(s.chunks for s in samples)
    ttfb = [s.ttfb * 1000 for s in samples]
    lat = [s.total * 1000 for s in samples]
    print(
        f"{level:>5} {name:>7} {len(samples):>6} {_pct(ttfb, 0.5):>8.2f}m"
        f" {_pct(ttfb, 0.99):>8.2f}m {_pct(lat, 0.5):>8.2f}m"
        f" {_pct(lat, 0.99):>8.2f}m {chunks / wall:>10,.0f} {cpu / chunks * 1e6:>8.1f}µs"
    )


def _print_added(
    level: int, direct: list[Sample], proxied: list[Sample], name: str = "added"
) -> None:
    def added(field: str, q: float) -> float:
        mine = _pct([getattr(s, field) for s in proxied], q)
        theirs = _pct([getattr(s, field) for s in direct], q)
        return (mine - theirs) * 1000

    print(
        f"{level:>5} {name:>7}  TTFB p50 {added('ttfb', 0.5):+.2f} ms,"
        f" p99 {added('ttfb', 0.99):+.2f} ms; latency p50 {added('total', 0.5):+.2f} ms"
    )


def _set_upstream_cpu(pid: int, spare: bool) -> str:
    """Put the upstream at idle priority (spare CPU only) or make it a normal process;
    say which it is (without CAP_SYS_NICE an idle-priority process cannot be raised)."""
    policy = os.SCHED_IDLE if spare else os.SCHED_OTHER
    with contextlib.suppress(PermissionError):
        os.sched_setscheduler(pid, policy, os.sched_param(0))
    if os.sched_getscheduler(pid) == os.SCHED_IDLE:
        return "idle priority, spare CPU only"
    return "a normal process"


#: Limits that every request is checked against and none reaches.
BENCH_LIMITS = json.dumps({"requests_per_minute": 1_000_000_000, "budget_usd": 1e12})


def measure_limits_check(rounds: int = 200_000) -> tuple[float, float]:
    """Microseconds one ``Quotas.admit_request`` takes, with limits and without."""
    from proxy.quota import Limits, QuotaConfig, Quotas
    from proxy.store import open_store

    async def measure() -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as directory:
            store = open_store(f"sqlite:///{directory}/bench.db")
            await store.migrate()
            try:
                figures = []
                for limits in (Limits.model_validate_json(BENCH_LIMITS), Limits()):
                    quotas = Quotas(store, QuotaConfig(limits, {}))
                    await quotas.admit_request("default", None)  # loads the bucket once
                    started = time.perf_counter()
                    for _ in range(rounds):
                        await quotas.admit_request("default", None)
                    figures.append((time.perf_counter() - started) / rounds * 1e6)
                return figures[0], figures[1]
            finally:
                await store.close()

    return asyncio.run(measure())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--levels", default="1,32,128")
    parser.add_argument(
        "--requests", type=int, default=0, help="per level (default 20 x level, at least 200)"
    )
    parser.add_argument("--clients", type=int, default=2, help="load-generating processes")
    parser.add_argument(
        "--gap-ms",
        type=float,
        default=0.0,
        help="time between the upstream's events (default 0: each response in one burst)",
    )
    parser.add_argument(
        "--bare",
        action="store_true",
        help="also run each level through a bare relay: what any relay costs on this machine",
    )
    parser.add_argument(
        "--limits",
        action="store_true",
        help="also run each level through a proxy with limits configured: what checking them costs",
    )
    parser.add_argument(
        "--upstream-cpu",
        choices=("auto", "spare", "shared"),
        default="auto",
        help="spare: the upstream runs at idle priority, on CPU the client and relay leave;"
        " shared: as a normal process; auto (default): spare at concurrency 1, else shared",
    )
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-bare", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--drive", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.chunks, args.gap_ms / 1000)
        return 0
    if args.serve_bare:
        serve_bare(*args.serve_bare)
        return 0
    if args.drive:
        url, concurrency, requests, output = args.drive
        drive(url, int(concurrency), int(requests), Path(output))
        return 0

    up_port, proxy_port, bare_port = _free_port(), _free_port(), _free_port()
    limited_port = _free_port()
    upstream = subprocess.Popen(
        [
            sys.executable,
            __file__,
            *("--serve-upstream", str(up_port), "--chunks", str(args.chunks)),
            *("--gap-ms", str(args.gap_ms)),
        ]
    )
    bare = (
        subprocess.Popen([sys.executable, __file__, "--serve-bare", str(bare_port), str(up_port)])
        if args.bare
        else None
    )
    with tempfile.TemporaryDirectory() as data_dir, tempfile.TemporaryDirectory() as other_dir:
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
        limited = (
            subprocess.Popen(
                [sys.executable, "-m", "proxy", "serve", "--port", str(limited_port)],
                cwd=ROOT,
                env={
                    **env,
                    "JETTY_PROXY_DATA_DIR": other_dir,
                    "JETTY_PROXY_DEFAULT_LIMITS": BENCH_LIMITS,
                },
                stderr=subprocess.DEVNULL,
            )
            if args.limits
            else None
        )
        try:
            wait_answering(f"http://127.0.0.1:{up_port}/", upstream)
            wait_answering(f"http://127.0.0.1:{proxy_port}/healthz", proxy)
            direct_url = f"http://127.0.0.1:{up_port}/v1/chat/completions"
            proxy_url = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
            paths = [("direct", direct_url, upstream.pid), ("proxy", proxy_url, proxy.pid)]
            if bare is not None:
                wait_answering(f"http://127.0.0.1:{bare_port}/", bare)
                bare_url = f"http://127.0.0.1:{bare_port}/v1/chat/completions"
                paths.append(("bare", bare_url, bare.pid))
            if limited is not None:
                wait_answering(f"http://127.0.0.1:{limited_port}/healthz", limited)
                limited_url = f"http://127.0.0.1:{limited_port}/v1/chat/completions"
                paths.append(("limits", limited_url, limited.pid))
            idle = tuple(pid for _, _, pid in paths)
            pace = f"{args.gap_ms:g} ms apart" if args.gap_ms else "each response in one burst"
            print(
                f"{args.chunks}-chunk streaming completions ({pace}); one proxy worker;"
                f" {os.cpu_count()} cores for the relay, the upstream and {args.clients} load"
                " processes"
            )
            print(
                f"{'conc':>5} {'path':>7} {'reqs':>6} {'TTFB p50':>9} {'TTFB p99':>9}"
                f" {'lat p50':>9} {'lat p99':>9} {'chunks/s':>10} {'CPU/chunk':>10}"
            )
            for level in (int(x) for x in args.levels.split(",")):
                requests = args.requests or max(200, 20 * level)
                spare = args.upstream_cpu == "spare" or (args.upstream_cpu == "auto" and level == 1)
                where = _set_upstream_cpu(upstream.pid, spare)
                print(f"{level:>5} upstream: {where}")
                results: dict[str, list[Sample]] = {}
                for name, url, watched in paths:
                    samples, wall, cpu = run_level(
                        url, level, requests, args.clients, watched, idle
                    )
                    bad = [s for s in samples if s.status != 200 or s.chunks != args.chunks]
                    if bad:
                        raise RuntimeError(f"{name}: {len(bad)} responses failed or lost chunks")
                    results[name] = samples
                    _print_row(level, name, samples, wall, cpu)
                _print_added(level, results["direct"], results["proxy"])
                if "bare" in results:
                    _print_added(level, results["direct"], results["bare"], "bare +")
                if "limits" in results:
                    _print_added(level, results["proxy"], results["limits"], "limits +")
            print(f"proxy peak RSS: {_peak_rss_mib(proxy.pid):.1f} MiB")
            if limited is not None:
                with_limits, without = measure_limits_check()
                print(
                    f"limits check in-process: {with_limits:.2f} µs per request with limits,"
                    f" {without:.2f} µs without"
                )
            print(
                "CPU/chunk: the upstream's CPU time (direct) or the relay's (proxy, bare) per chunk"
            )
        finally:
            proxy.terminate()
            upstream.terminate()
            if bare is not None:
                bare.terminate()
                bare.wait(timeout=10)
            if limited is not None:
                limited.terminate()
                limited.wait(timeout=120)
            # The proxy finishes writing its records of the completions before it exits.
            proxy.wait(timeout=120)
            upstream.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
