"""Blob store benchmark: the directory store and the S3 store, in one run.

Writes and reads ``--small`` blobs of ``--small-size`` bytes (``--concurrency`` at a time)
and ``--large`` blobs of ``--large-size`` bytes (one at a time) on each store, then deletes
them, and prints per phase: throughput, the process's CPU time and how far its peak RSS rose
above where the phase started. Large blobs stream in ``--chunk``-byte chunks from a 1 MiB
pattern, and are read chunk by chunk: a rise far below the blob's size shows that neither
direction holds a blob in memory.

    python benchmarks/blobs.py [--small 1000] [--small-size 4096] [--large 5]
                               [--large-size 268435456] [--concurrency 16]
                               [--endpoint URL --bucket NAME] [--stores directory,s3]

Without ``--endpoint`` the benchmark starts a moto S3 server on a free loopback port (moto
is in the dev extras) and creates the bucket in it; with one, the bucket must exist and the
credentials come from the usual AWS settings. The S3 figures then include that server's
work on the same machine. Figures depend on the machine; they are printed, not asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx

from proxy.store.blobs import BlobStore, LocalBlobStore, open_blob_store

MIB = 1024 * 1024


@dataclass
class Phase:
    store: str
    name: str
    blobs: int
    size: int
    seconds: float
    cpu: float
    rss_rise: int

    def report(self) -> str:
        return (
            f"{self.store:<10} {self.name:<12} {self.blobs:>6} x {_size(self.size):>9}"
            f"  {self.seconds:7.2f} s  {self.blobs * self.size / MIB / self.seconds:8.1f} MiB/s"
            f"  {self.blobs / self.seconds:8.0f} blobs/s  CPU {self.cpu:6.2f} s"
            f"  peak RSS +{self.rss_rise / MIB:7.1f} MiB"
        )


class PeakRss:
    """The process's peak RSS over a block, from the kernel's high-water mark."""

    def __enter__(self) -> PeakRss:
        self.resettable = _reset_peak()
        self.start = _status("VmRSS")
        self.cpu = _cpu()
        self.rise = 0
        self.cpu_used = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        peak = _status("VmHWM") if self.resettable else _maxrss()
        self.rise = max(0, peak - self.start)
        self.cpu_used = _cpu() - self.cpu


async def pattern(size: int, chunk: int, block: bytes) -> AsyncIterator[bytes]:
    """``size`` bytes in ``chunk``-byte pieces cut from ``block`` (a fresh object each)."""
    view = memoryview(block)
    sent = 0
    while sent < size:
        n = min(chunk, size - sent)
        offset = sent % len(block)
        piece = bytes(view[offset : offset + n])
        if len(piece) < n:
            piece += bytes(view[: n - len(piece)])
        sent += n
        yield piece


async def read_size(blobs: BlobStore, key: str, chunk: int) -> int:
    return sum([len(part) async for part in await blobs.open(key, chunk_size=chunk)])


async def bench_store(name: str, blobs: BlobStore, args: argparse.Namespace) -> list[Phase]:
    block = os.urandom(MIB)
    phases: list[Phase] = []

    async def measured(phase: str, count: int, size: int, work: AsyncIterator[None]) -> None:
        started = time.perf_counter()
        with PeakRss() as rss:
            async for _ in work:
                pass
        seconds = time.perf_counter() - started
        phases.append(Phase(name, phase, count, size, seconds, rss.cpu_used, rss.rise))

    small: list[str] = []

    async def write_small() -> AsyncIterator[None]:
        limiter = anyio.Semaphore(args.concurrency)

        async def one() -> None:
            async with limiter:
                data = pattern(args.small_size, args.small_size, block)
                small.append((await blobs.put(data)).key)

        async with anyio.create_task_group() as tg:
            for _ in range(args.small):
                tg.start_soon(one)
        yield None

    async def read_small() -> AsyncIterator[None]:
        limiter = anyio.Semaphore(args.concurrency)

        async def one(key: str) -> None:
            async with limiter:
                if await read_size(blobs, key, args.chunk) != args.small_size:
                    raise RuntimeError(f"{name}: blob {key} came back with the wrong size")

        async with anyio.create_task_group() as tg:
            for key in small:
                tg.start_soon(one, key)
        yield None

    large: list[str] = []

    async def write_large() -> AsyncIterator[None]:
        for _ in range(args.large):
            info = await blobs.put(pattern(args.large_size, args.chunk, block))
            large.append(info.key)
            yield None

    async def read_large() -> AsyncIterator[None]:
        for key in large:
            if await read_size(blobs, key, args.chunk) != args.large_size:
                raise RuntimeError(f"{name}: blob {key} came back with the wrong size")
            yield None

    try:
        await measured("write small", args.small, args.small_size, write_small())
        await measured("read small", args.small, args.small_size, read_small())
        await measured("write large", args.large, args.large_size, write_large())
        await measured("read large", args.large, args.large_size, read_large())
    finally:
        for key in small + large:
            await blobs.delete(key)
    return phases


async def run(args: argparse.Namespace, s3_url: str | None) -> list[Phase]:
    phases: list[Phase] = []
    if "directory" in args.stores:
        with tempfile.TemporaryDirectory(dir=args.directory) as tmp:
            phases += await bench_store("directory", LocalBlobStore(Path(tmp)), args)
    if s3_url is not None:
        phases += await bench_store("s3", open_blob_store(s3_url), args)
    return phases


@contextlib.contextmanager
def s3_endpoint(args: argparse.Namespace) -> Iterator[str]:
    """The S3 URL to measure: on ``--endpoint``, or on a moto server started for the run."""
    if args.endpoint:
        os.environ["AWS_ENDPOINT_URL"] = args.endpoint
        yield f"s3://{args.bucket}/bench-{uuid.uuid4().hex[:8]}"
        return
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(endpoint, server)
        httpx.put(f"{endpoint}/{args.bucket}").raise_for_status()
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_REGION="us-east-1",
        )
        yield f"s3://{args.bucket}/bench"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_for(endpoint: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the moto server exited; is moto[server] installed?")
        with contextlib.suppress(httpx.TransportError):
            httpx.get(endpoint, timeout=2)
            return
        time.sleep(0.2)
    raise RuntimeError(f"the moto server did not answer on {endpoint}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def _size(n: int) -> str:
    return f"{n / MIB:.0f} MiB" if n >= MIB else f"{n / 1024:.0f} KiB" if n >= 1024 else f"{n} B"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=1000, help="small blobs (default 1000)")
    parser.add_argument("--small-size", type=int, default=4096, help="bytes (default 4 KiB)")
    parser.add_argument("--large", type=int, default=5, help="large blobs (default 5)")
    parser.add_argument("--large-size", type=int, default=256 * MIB, help="default 256 MiB")
    parser.add_argument("--chunk", type=int, default=64 * 1024, help="stream chunk (64 KiB)")
    parser.add_argument("--concurrency", type=int, default=16, help="small blobs in flight")
    parser.add_argument("--stores", default="directory,s3", help="directory,s3 (default both)")
    parser.add_argument("--directory", help="where the directory store lives (default: tmp)")
    parser.add_argument("--endpoint", help="an S3 endpoint; default: start a moto server")
    parser.add_argument("--bucket", default="jetty-bench", help="bucket (must exist on --endpoint)")
    args = parser.parse_args()
    args.stores = set(args.stores.split(","))

    print(
        f"{args.small} x {_size(args.small_size)} ({args.concurrency} at a time),"
        f" {args.large} x {_size(args.large_size)}, {_size(args.chunk)} chunks"
    )
    with contextlib.ExitStack() as stack:
        s3_url = stack.enter_context(s3_endpoint(args)) if "s3" in args.stores else None
        for phase in anyio.run(run, args, s3_url):
            print(phase.report())


if __name__ == "__main__":
    main()
