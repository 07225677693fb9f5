"""Run start-up benchmark: request → the agent's first event, cold, warm and raw, per agent.

For each agent CLI (Claude Code, Codex, Gemini CLI), three ways to start the same pinned CLI
with the same command, image and limits (no network, 2 CPUs, 4 GiB, no capabilities, a
read-only root), measured until the CLI's first event:

* ``raw``: ``docker run`` (the docker CLI) of the command, until its first stdout line;
* ``cold``: a runbook request through the proxy, until the stream's "<agent> started" line
  (the CLI's first event, relayed): request parsing, checks, the trajectory record, a new
  container, its start, the log stream;
* ``warm``: the same request through a preset whose pool keeps sandboxes started
  (``warm = 2``), where the agent can, with the agent started in each sandbox ahead of
  its run.

Every sample, in any mode, starts at rest: all pools full again and ``--settle`` seconds
(default 1) passed, since a refill (a container, and the agent started in it, which takes a
few tenths of a second to load) takes the CPU from whatever runs next; a run that claims a
sandbox whose agent is still loading waits for the rest of it.

    JETTY_PROXY_DOCKER_HOST=unix:///… JETTY_PROXY_AGENT_CACHE_DIR=… \\
        python benchmarks/run_start.py [--runs 7] [--agents claude-code,codex,gemini-cli]
                                       [--modes raw,cold,warm] [--image REF] [--settle S]

Prints every sample, then per agent and mode the median and p90, and the ratios of the
medians to raw. The modes take turns within each round (the first of a round moves on each
round), so that a drift in the machine's load touches them alike; on a shared machine the
agents' own start varies by a fifth, so compare rounds, not single samples. ``--modes
raw,cold`` also runs against a checkout without warm pools, for figures before them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.agents import AgentSpec, get_adapter  # noqa: E402
from proxy.agents.forwarder import (  # noqa: E402
    FORWARDER_MOUNT_POINT,
    ensure_forwarder,
    forwarder_argv,
)
from proxy.agents.install import AgentCache  # noqa: E402
from proxy.app import create_app  # noqa: E402
from proxy.presets import Preset  # noqa: E402
from proxy.settings import Settings  # noqa: E402
from tests.support.live import serve  # noqa: E402
from tests.support.scripted_anthropic import ScriptedAnthropic  # noqa: E402
from tests.support.scripted_gemini import ScriptedGemini  # noqa: E402
from tests.support.scripted_responses import ScriptedResponses  # noqa: E402

RUNBOOK = "# Benchmark\n\nWrite hello.txt into /app/results."
MODELS = {"claude-code": "claude-sonnet-4-6", "codex": "gpt-5.5", "gemini-cli": "gemini-2.5-pro"}
MEMORY = 4 * 1024**3
WARM = 2
LIMITS = [
    *("--network", "none", "--cpus", "2", "--memory", "4g", "--memory-swap", "4g"),
    *("--pids-limit", "512", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"),
    *("--read-only", "-v", "/app", "-v", "/tmp"),
]


def request_body(agent: str, image: str, *, preset: bool) -> dict[str, Any]:
    if preset:
        return {
            "model": f"jetty/{agent}",
            "stream": True,
            "messages": [{"role": "user", "content": "Go"}],
        }
    return {
        "model": MODELS[agent],
        "stream": True,
        "messages": [{"role": "system", "content": RUNBOOK}, {"role": "user", "content": "Go"}],
        "jetty": {"runbook": True, "collection": "bench", "task": "start", "image": image},
    }


def proxied(client: httpx.Client, proxy: str, agent: str, body: dict[str, Any]) -> float:
    """Seconds from the request to the stream's line saying the agent started."""
    started = time.perf_counter()
    first: float | None = None
    with client.stream("POST", proxy + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and f"{agent} started" in line:
                first = time.perf_counter() - started
    if first is None:
        raise RuntimeError(f"the stream never showed {agent} starting")
    return first


def wait_for_pool(client: httpx.Client, proxy: str, agent: str) -> None:
    """Until the agent's preset pool has all its sandboxes waiting again (a sandbox counts as
    ready once its container waits; the agent started in it may still be loading)."""
    ready = f'jetty_proxy_warm_sandboxes_ready{{pool="preset:{agent}"}} {WARM:.1f}'
    deadline = time.monotonic() + 120
    while ready not in client.get(proxy + "/metrics").text:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pool of {agent} did not fill")
        time.sleep(0.05)


def raw_command(agent: str, image: str, cache: Path) -> list[str]:
    """``docker run`` of the command the proxy runs for ``agent`` (without the relay: the
    first event comes before the first model call)."""
    adapter = get_adapter(agent)
    installed = anyio.run(AgentCache(cache).ensure, adapter)
    tcp = adapter.relay_transport == "tcp"
    port = 40001
    spec: dict[str, Any] = {
        "prompt": "Go",
        "model": MODELS[agent],
        "relay_base_url": f"http://127.0.0.1:{port}" if tcp else "http://relay",
        "relay_token": "jrt-none",
        "home": "/tmp/home",
        "workdir": "/app",
    }
    if "memory_bytes" in {f.name for f in dataclasses.fields(AgentSpec)}:
        spec["memory_bytes"] = MEMORY
    invocation = adapter.build(AgentSpec(**spec))
    node_options = getattr(invocation, "node_options", ())
    if node_options:
        argv = [*installed.argv_with(node_options), *invocation.argv[1:]]
    else:
        argv = [*installed.argv, *invocation.argv[1:]]
    mounts = ["-v", f"{installed.host_dir}:{installed.mount_point}:ro"]
    if tcp:
        forwarder = anyio.run(ensure_forwarder, cache)
        mounts += ["-v", f"{forwarder.parent}:{FORWARDER_MOUNT_POINT}:ro"]
        argv = forwarder_argv(argv, port=port, socket="/run/jetty/relay.sock")
    env = {
        **invocation.env,
        **getattr(installed, "runtime_env", {}),
        "PATH": installed.env_path(),
    }
    writes = "".join(
        f" && mkdir -p {shlex.quote(os.path.dirname(path))}"
        f" && printf '%s' {shlex.quote(content.decode())} > {shlex.quote(path)}"
        for path, content in invocation.files.items()
    )
    prelude = f'mkdir -p /app/results /tmp/home{writes} && exec "$@"'
    return [
        *("docker", "run", "--rm", "--pull", "never", *LIMITS, *mounts),
        *(arg for key, value in env.items() for arg in ("-e", f"{key}={value}")),
        *("-w", "/app", image, "/bin/sh", "-c", prelude, "raw", *argv),
    ]


def raw(command: list[str], docker_host: str) -> float:
    """Seconds from ``docker run`` to the CLI's first stdout line."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "DOCKER_HOST": docker_host},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    elapsed = time.perf_counter() - started
    process.stdout.read()
    process.wait(timeout=120)
    if not line:
        raise RuntimeError(f"{command[-1]}: no output from docker run")
    return elapsed


@contextlib.contextmanager
def model_servers() -> Iterator[dict[str, str]]:
    """The three scripted model servers: their base URLs as the settings take them."""
    with (
        serve(ScriptedAnthropic().app()) as anthropic,
        serve(ScriptedResponses().app()) as responses,
        serve(ScriptedGemini().app()) as gemini,
    ):
        yield {
            "anthropic_base_url": anthropic,
            "openai_base_url": responses + "/v1",
            "google_base_url": gemini,
        }


def settings_for(
    data_dir: Path, docker_host: str, cache: Path, urls: dict[str, str], **more: Any
) -> Settings:
    fields: dict[str, Any] = {
        "data_dir": data_dir,
        "backend": "docker",
        "docker_host": docker_host,
        "agent_cache_dir": cache,
        **urls,
        **{f"{name}_api_key": "sk-bench" for name in ("anthropic", "openai", "google")},
        **more,
    }
    return Settings(**fields)


def presets(agents: list[str], image: str) -> dict[str, Preset]:
    jetty = {"collection": "bench", "task": "start", "image": image}
    return {
        agent: Preset(
            model=MODELS[agent], runbook=RUNBOOK, jetty={**jetty, "agent": agent}, warm=WARM
        )
        for agent in agents
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--agents", default="claude-code,codex,gemini-cli")
    parser.add_argument("--modes", default="raw,cold,warm")
    parser.add_argument("--image", default="127.0.0.1:5000/jetty/testenv:bookworm")
    parser.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="seconds to wait after a pool is full before a warm request (default 1)",
    )
    args = parser.parse_args()
    agents, modes = args.agents.split(","), args.modes.split(",")
    docker_host = os.environ.get("JETTY_PROXY_DOCKER_HOST") or os.environ.get("DOCKER_HOST")
    cache_dir = os.environ.get("JETTY_PROXY_AGENT_CACHE_DIR")
    if not docker_host or not cache_dir:
        print("set JETTY_PROXY_DOCKER_HOST and JETTY_PROXY_AGENT_CACHE_DIR", file=sys.stderr)
        return 2
    cache = Path(cache_dir)
    samples: dict[tuple[str, str], list[float]] = {(a, m): [] for a in agents for m in modes}
    with (
        tempfile.TemporaryDirectory() as data,
        model_servers() as urls,
        # One client for every request, as an application keeps its OpenAI client.
        httpx.Client(timeout=300) as client,
        contextlib.ExitStack() as stack,
    ):
        cold = stack.enter_context(
            serve(create_app(settings_for(Path(data) / "cold", docker_host, cache, urls)))
        )
        warm = ""
        if "warm" in modes:
            with_pools = settings_for(
                Path(data) / "warm", docker_host, cache, urls, presets=presets(agents, args.image)
            )
            warm = stack.enter_context(serve(create_app(with_pools)))
        commands = {agent: raw_command(agent, args.image, cache) for agent in agents}

        def once(agent: str, mode: str) -> float:
            # Every sample starts at rest: no pool is still refilling (a refill's container
            # and agent start would take the CPU from whatever runs next, in any mode).
            if warm:
                for each in agents:
                    wait_for_pool(client, warm, each)
                time.sleep(args.settle)
            if mode == "raw":
                return raw(commands[agent], docker_host)
            if mode == "cold":
                return proxied(client, cold, agent, request_body(agent, args.image, preset=False))
            return proxied(client, warm, agent, request_body(agent, args.image, preset=True))

        for agent in agents:  # once each, not counted: page cache, image layers, connections
            for mode in modes:
                once(agent, mode)
        for index in range(args.runs):
            for agent in agents:
                order = modes[index % len(modes) :] + modes[: index % len(modes)]
                for mode in order:
                    samples[agent, mode].append(once(agent, mode))
    report(agents, modes, samples)
    return 0


def report(
    agents: list[str], modes: list[str], samples: dict[tuple[str, str], list[float]]
) -> None:
    print(f"{'agent':<12} {'mode':<5} samples (ms)")
    for (agent, mode), times in samples.items():
        print(f"{agent:<12} {mode:<5} " + " ".join(f"{t * 1000:.0f}" for t in times))
    print()
    print(f"{'agent':<12} {'mode':<5} {'median':>8} {'p90':>8} {'vs raw':>7}")
    for agent in agents:
        base = statistics.median(samples[agent, "raw"]) if "raw" in modes else None
        for mode in modes:
            times = samples[agent, mode]
            median = statistics.median(times)
            ratio = f"{median / base:.2f}" if base else "-"
            print(
                f"{agent:<12} {mode:<5} {median * 1000:>6.0f}ms {p90(times) * 1000:>6.0f}ms"
                f" {ratio:>7}"
            )


def p90(times: list[float]) -> float:
    if len(times) < 2:
        return times[0]
    return statistics.quantiles(times, n=10)[-1]


if __name__ == "__main__":
    raise SystemExit(main())
