"""Run start-up benchmark: request → first agent event through the proxy, vs a raw docker run.

Both sides start the same pinned Claude Code CLI from the agent cache in the same image with
``--network none`` and measure until the CLI's first output: through the proxy that is the
stream's "claude-code started" line (the CLI's ``system/init`` event, relayed), raw it is the
first stdout line of ``docker run``. The proxy side includes everything a user waits for:
request parsing, trajectory record, container create, file copy-in, start, log streaming.

    JETTY_PROXY_DOCKER_HOST=unix:///… JETTY_PROXY_AGENT_CACHE_DIR=… \\
        python benchmarks/run_start.py [--runs 7] [--image REF]

Prints per-run times, the medians and the ratio (target: the proxy adds < 15 %), with the
quartiles of each side and the median difference of the pairs (each pair runs back to back):
on a shared machine the agent's own start varies by seconds, so compare several rounds, not
single medians. The two sides alternate which goes first, so a drift in load affects both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.agents import AgentSpec, get_adapter  # noqa: E402
from proxy.agents.install import AgentCache  # noqa: E402
from proxy.app import create_app  # noqa: E402
from proxy.settings import Settings  # noqa: E402
from tests.support.live import serve  # noqa: E402
from tests.support.scripted_anthropic import ScriptedAnthropic  # noqa: E402

RUNBOOK = "# Benchmark\n\nWrite hello.txt into /app/results."


def proxied(client: httpx.Client, proxy: str, image: str) -> float:
    body = {
        "model": "claude-sonnet-4-6",
        "stream": True,
        "messages": [{"role": "system", "content": RUNBOOK}, {"role": "user", "content": "Go"}],
        "jetty": {"runbook": True, "collection": "bench", "task": "start", "image": image},
    }
    started = time.perf_counter()
    first: float | None = None
    with client.stream("POST", proxy + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and "claude-code started" in line:
                first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("the stream never showed the agent starting")
    return first


def raw(docker_host: str, image: str, cache: Path) -> float:
    installed = anyio.run(AgentCache(cache).ensure, get_adapter("claude-code"))
    invocation = get_adapter("claude-code").build(
        AgentSpec(
            prompt="Go",
            model="claude-sonnet-4-6",
            relay_base_url="http://relay",
            relay_token="jrt-none",
            home="/tmp/home",
        )
    )
    env_args = [arg for key, value in invocation.env.items() for arg in ("-e", f"{key}={value}")]
    command = [
        "docker",
        "run",
        "--rm",
        "--pull",
        "never",
        "--network",
        "none",
        "-v",
        f"{installed.host_dir}:{installed.mount_point}:ro",
        *env_args,
        "-w",
        "/tmp",
        image,
        *installed.argv,
        *invocation.argv[1:],
    ]
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "DOCKER_HOST": docker_host},
    )
    assert process.stdout is not None
    process.stdout.readline()
    elapsed = time.perf_counter() - started
    process.wait(timeout=60)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--image", default="127.0.0.1:5000/jetty/testenv:bookworm")
    args = parser.parse_args()
    docker_host = os.environ.get("JETTY_PROXY_DOCKER_HOST") or os.environ.get("DOCKER_HOST")
    cache = os.environ.get("JETTY_PROXY_AGENT_CACHE_DIR")
    if not docker_host or not cache:
        print("set JETTY_PROXY_DOCKER_HOST and JETTY_PROXY_AGENT_CACHE_DIR", file=sys.stderr)
        return 2

    scripted = ScriptedAnthropic()
    with tempfile.TemporaryDirectory() as data_dir, serve(scripted.app()) as model_url:
        settings = Settings(
            data_dir=Path(data_dir),
            backend="docker",
            docker_host=docker_host,
            agent_cache_dir=Path(cache),
            anthropic_base_url=model_url,
            anthropic_api_key="sk-bench",
        )
        # One client for every request, as an application keeps its OpenAI client: building
        # one (its TLS context) takes 40-60 ms here, which is not the proxy's time.
        with serve(create_app(settings)) as proxy, httpx.Client(timeout=120) as client:
            proxied(client, proxy, args.image)  # warm: agent cache, image layers, connections
            raw(docker_host, args.image, Path(cache))
            through, direct = [], []
            for index in range(args.runs):
                if index % 2:
                    direct.append(raw(docker_host, args.image, Path(cache)))
                    through.append(proxied(client, proxy, args.image))
                else:
                    through.append(proxied(client, proxy, args.image))
                    direct.append(raw(docker_host, args.image, Path(cache)))
    print(f"{'run':>4} {'raw docker run':>15} {'through proxy':>14}")
    for index, (d, t) in enumerate(zip(direct, through, strict=True), start=1):
        print(f"{index:>4} {d * 1000:>12.0f} ms {t * 1000:>11.0f} ms")
    for name, times in (("raw", direct), ("proxy", through)):
        low, mid, high = _quartiles(times)
        print(
            f"{name:>5}: min {min(times) * 1000:.0f}, quartiles {low * 1000:.0f} / {mid * 1000:.0f}"
            f" / {high * 1000:.0f} ms"
        )
    # Each pair ran back to back: the median of their differences is the proxy's cost with
    # less of the load drift that moves both sides.
    low, mid, high = _quartiles([t - d for d, t in zip(direct, through, strict=True)])
    print(
        f"paired: proxy - raw {mid * 1000:+.0f} ms"
        f" (quartiles {low * 1000:+.0f} / {high * 1000:+.0f})"
    )
    raw_median, proxy_median = statistics.median(direct), statistics.median(through)
    print(
        f"median: raw {raw_median * 1000:.0f} ms, proxy {proxy_median * 1000:.0f} ms,"
        f" ratio {proxy_median / raw_median:.2f} ({(proxy_median / raw_median - 1) * 100:+.0f} %)"
    )
    return 0


def _quartiles(times: list[float]) -> tuple[float, float, float]:
    if len(times) < 2:
        return times[0], times[0], times[0]
    low, mid, high = statistics.quantiles(times, n=4)
    return low, mid, high


if __name__ == "__main__":
    raise SystemExit(main())
