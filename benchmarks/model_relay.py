"""Model relay benchmark: agents' model calls through the per-run relay, vs straight upstream.

Starts a fast scripted upstream that speaks the three APIs the relay serves (Anthropic
Messages, the OpenAI Responses API, Gemini's ``streamGenerateContent?alt=sse``), every SSE
event its own chunk as a model server writes them, and the proxy's model relay as a run's
agent reaches it (`~proxy.runs.runtime.serve_relay_socket`: a unix socket, a run token from
`~proxy.relay.tokens.RunTokens`, the usage of each call read and handed to the run), each
its own process. Then, per API and concurrency level, the same streamed calls of
``--chunks`` events straight at the upstream and through the relay, in alternating rounds
(a drift in the machine's load touches both alike), and prints per path the time to the
first event and to the end (p50/p99) and events per second, and what the relay adds: time per
call, and its process's CPU per call and per event.

    python benchmarks/model_relay.py [--chunks 200] [--levels 1,8] [--calls 60] [--rounds 3]
                                     [--apis anthropic,responses,gemini]

The client is httpx, as an agent's SDK would be, on one event loop in this process; it
reaches the relay over its unix socket (as the sandbox does) and the upstream over TCP. The
relay's usage hook does nothing here: in a run it appends one ``model_call`` event per call
to the store. Figures depend on the machine and what else runs on it: compare the rows of
one run, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from passthrough import _Upstream  # noqa: E402

from tests.support.live import free_port, wait_answering  # noqa: E402

TOKEN_FILE = "token"


@dataclass(frozen=True)
class Api:
    """One API the relay serves: where a call goes and the body it sends."""

    name: str
    path: str
    body: dict[str, Any]
    # How the run token (or, straight upstream, a key) is sent.
    key_header: str


APIS = (
    Api(
        "anthropic",
        "/v1/messages",
        {
            "model": "claude-sonnet-4-6",
            "max_tokens": 1024,
            "stream": True,
            "messages": [{"role": "user", "content": "go"}],
        },
        "x-api-key",
    ),
    Api(
        "responses",
        "/v1/responses",
        {"model": "gpt-5.5", "stream": True, "input": "go"},
        "authorization",
    ),
    Api(
        "gemini",
        "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
        {"contents": [{"role": "user", "parts": [{"text": "go"}]}]},
        "x-goog-api-key",
    ),
)


def _sse(name: str | None, data: dict[str, Any]) -> bytes:
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def api_events(api: str, chunks: int) -> list[bytes]:
    """The upstream's SSE events for one streamed call of ``api`` with ``chunks`` text deltas
    (and the usage the relay reads)."""
    deltas = [f"tok{i} " for i in range(chunks)]
    if api == "anthropic":
        message: dict[str, Any] = {
            "id": "msg_bench",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-6",
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": 11, "output_tokens": 1},
        }
        return [
            _sse("message_start", {"type": "message_start", "message": message}),
            _sse(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
            ),
            *(
                _sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": text},
                    },
                )
                for text in deltas
            ),
            _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn"},
                    "usage": {"output_tokens": chunks},
                },
            ),
            _sse("message_stop", {"type": "message_stop"}),
        ]
    if api == "responses":
        response = {"id": "resp_bench", "object": "response", "model": "gpt-5.5"}
        usage = {"input_tokens": 11, "output_tokens": chunks, "total_tokens": 11 + chunks}
        return [
            _sse(
                "response.created",
                {"type": "response.created", "response": {**response, "status": "in_progress"}},
            ),
            *(
                _sse(
                    "response.output_text.delta",
                    {
                        "type": "response.output_text.delta",
                        "item_id": "msg_bench",
                        "output_index": 0,
                        "content_index": 0,
                        "delta": text,
                    },
                )
                for text in deltas
            ),
            _sse(
                "response.completed",
                {
                    "type": "response.completed",
                    "response": {**response, "status": "completed", "usage": usage},
                },
            ),
        ]
    frames: list[dict[str, Any]] = [
        {"candidates": [{"content": {"role": "model", "parts": [{"text": t}]}, "index": 0}]}
        for t in deltas
    ]
    frames[-1]["candidates"][0]["finishReason"] = "STOP"
    frames[-1]["usageMetadata"] = {
        "promptTokenCount": 11,
        "candidatesTokenCount": chunks,
        "totalTokenCount": 11 + chunks,
    }
    return [_sse(None, frame) for frame in frames]


def _framed(events: Sequence[bytes]) -> list[bytes]:
    start = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    return [start, *(b"%x\r\n%s\r\n" % (len(e), e) for e in events), b"0\r\n\r\n"]


class _ByPath(_Upstream):
    """The passthrough benchmark's upstream, answering each API's path with its stream."""

    def __init__(self, frames: dict[str, list[bytes]]):
        super().__init__(frames["anthropic"], 0.0)
        self._by_api = frames

    def on_url(self, url: bytes) -> None:
        for api in APIS:
            if url.startswith(api.path.split("?")[0].encode()):
                self._frames = self._by_api[api.name]


def serve_upstream(port: int, chunks: int) -> None:
    frames = {api.name: _framed(api_events(api.name, chunks)) for api in APIS}

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _ByPath(frames), "127.0.0.1", port, backlog=4096)
        await server.serve_forever()

    uvloop.run(serve())


def serve_relay(upstream: str, directory: Path) -> None:
    """The proxy's model relay on a unix socket, as a run's sandbox reaches it; writes the
    socket's path and a live run token into ``directory`` and serves until terminated."""
    from proxy.relay.tokens import ModelUsage, RunTokens
    from proxy.runs.runtime import serve_relay_socket
    from proxy.settings import Settings

    settings = Settings(
        data_dir=directory,
        anthropic_base_url=upstream,
        openai_base_url=upstream + "/v1",
        google_base_url=upstream,
        anthropic_api_key="sk-bench",
        openai_api_key="sk-bench",
        google_api_key="sk-bench",
    )
    tokens = RunTokens()

    async def on_usage(usage: ModelUsage) -> None:
        pass

    async def serve() -> None:
        token = tokens.issue("run-bench", "bench", on_usage=on_usage)
        async with serve_relay_socket(tokens, settings) as socket_path:
            (directory / TOKEN_FILE).write_text(f"{socket_path}\n{token}\n")
            await anyio.sleep_forever()

    anyio.run(serve, backend_options={"use_uvloop": True})


@dataclass
class Sample:
    first: float
    total: float
    events: int


async def call(client: httpx.AsyncClient, api: Api, key: str) -> Sample:
    value = f"Bearer {key}" if api.key_header == "authorization" else key
    started = time.perf_counter()
    first = 0.0
    events = 0
    async with client.stream(
        "POST", api.path, json=api.body, headers={api.key_header: value}
    ) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{api.name}: {response.status_code} {await response.aread()!r}")
        async for piece in response.aiter_raw():
            found = piece.count(b"data: ")
            if found and not first:
                first = time.perf_counter() - started
            events += found
    return Sample(first, time.perf_counter() - started, events)


async def batch(
    client: httpx.AsyncClient, api: Api, key: str, level: int, calls: int
) -> tuple[list[Sample], float]:
    """``calls`` calls, ``level`` at a time; the samples and the wall time."""
    samples: list[Sample] = []
    todo = iter(range(calls))

    async def worker() -> None:
        for _ in todo:
            samples.append(await call(client, api, key))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(level)))
    return samples, time.perf_counter() - started


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    args: argparse.Namespace, upstream: str, socket_path: str, token: str, relay_pid: int
) -> None:
    levels = [int(level) for level in args.levels.split(",")]
    limits = httpx.Limits(max_connections=max(levels), max_keepalive_connections=max(levels))
    direct = httpx.AsyncClient(base_url=upstream, limits=limits, timeout=60)
    relay = httpx.AsyncClient(
        base_url="http://relay",
        transport=httpx.AsyncHTTPTransport(uds=socket_path, limits=limits),
        timeout=60,
    )
    clients = {"direct": (direct, "sk-bench"), "relay": (relay, token)}
    print(
        f"{args.chunks} events per call, {args.calls} calls per round, {args.rounds} rounds;"
        f" {os.cpu_count()} cores"
    )
    print(
        f"{'api':<10} {'level':>5} {'path':<7} {'first p50':>10} {'p99':>7}"
        f" {'end p50':>8} {'p99':>7} {'events/s':>9}"
    )
    async with direct, relay:
        for api in [api for api in APIS if api.name in args.apis.split(",")]:
            for level in levels:
                got: dict[str, tuple[list[Sample], float]] = {n: ([], 0.0) for n in clients}
                relay_cpu = 0.0
                for client, key in clients.values():  # connections, caches
                    await batch(client, api, key, level, level * 2)
                for index in range(args.rounds):
                    order = list(clients) if index % 2 == 0 else list(reversed(clients))
                    for name in order:
                        client, key = clients[name]
                        before = cpu_seconds(relay_pid)
                        samples, wall = await batch(client, api, key, level, args.calls)
                        if name == "relay":
                            relay_cpu += cpu_seconds(relay_pid) - before
                        kept, took = got[name]
                        got[name] = (kept + samples, took + wall)
                for name, (samples, wall) in got.items():
                    first = [s.first for s in samples]
                    total = [s.total for s in samples]
                    print(
                        f"{api.name:<10} {level:>5} {name:<7} {pct(first, 50):>8.2f}ms"
                        f" {pct(first, 99):>5.2f}ms {pct(total, 50):>6.2f}ms"
                        f" {pct(total, 99):>5.2f}ms {sum(s.events for s in samples) / wall:>9.0f}"
                    )
                (direct_samples, _), (relay_samples, _) = got["direct"], got["relay"]
                added = [
                    pct([s.total for s in relay_samples], q)
                    - pct([s.total for s in direct_samples], q)
                    for q in (50, 99)
                ]
                events = sum(s.events for s in relay_samples)
                print(
                    f"{api.name:<10} {level:>5} added   per call: p50 {added[0]:+.2f} ms,"
                    f" p99 {added[1]:+.2f} ms; relay CPU {relay_cpu / len(relay_samples) * 1e3:.2f}"
                    f" ms per call, {relay_cpu / events * 1e6:.1f} us per event"
                )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--chunks", type=int, default=200, help="SSE events per call")
    parser.add_argument("--levels", default="1,8", help="concurrent calls, comma-separated")
    parser.add_argument("--calls", type=int, default=60, help="calls per path and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--apis", default=",".join(api.name for api in APIS))
    parser.add_argument("--upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--relay", nargs=2, metavar=("UPSTREAM", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        serve_upstream(args.upstream, args.chunks)
        return 0
    if args.relay:
        serve_relay(args.relay[0], Path(args.relay[1]))
        return 0
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as directory:
        processes = [
            subprocess.Popen(
                [sys.executable, __file__, "--upstream", str(port), "--chunks", str(args.chunks)]
            ),
            subprocess.Popen([sys.executable, __file__, "--relay", upstream, directory]),
        ]
        try:
            ready = Path(directory) / TOKEN_FILE
            deadline = time.monotonic() + 60
            while not ready.exists() or len(ready.read_text().splitlines()) < 2:
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                    print("the relay or the upstream did not start", file=sys.stderr)
                    return 1
                time.sleep(0.05)
            socket_path, token = ready.read_text().splitlines()
            wait_answering(upstream, processes[0])
            uvloop.run(measure(args, upstream, socket_path, token, processes[1].pid))
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
