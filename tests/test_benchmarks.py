"""The benchmarks still run: a few requests each, figures not judged (they are reported)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ci import unavailable

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_passthrough_benchmark_runs_every_path() -> None:
    result = run_benchmark(
        "passthrough.py", "--levels", "1,4", "--requests", "20", "--chunks", "20", "--bare"
    )
    lines = result.stdout.splitlines()
    for level in ("1", "4"):
        rows = [line.split()[1] for line in lines if line.split()[:1] == [level]]
        assert rows == ["upstream:", "direct", "proxy", "bare", "added", "bare"], result.stdout
    # At concurrency 1 the stand-in upstream gets only spare CPU, above it a normal share.
    assert "    1 upstream: idle priority, spare CPU only" in lines, result.stdout
    assert any(line.startswith("proxy peak RSS:") for line in lines)


def test_passthrough_benchmark_measures_the_limits_check() -> None:
    result = run_benchmark(
        "passthrough.py", "--levels", "1", "--requests", "20", "--chunks", "20", "--limits"
    )
    lines = result.stdout.splitlines()
    rows = [line.split()[1] for line in lines if line.split()[:1] == ["1"]]
    assert rows == ["upstream:", "direct", "proxy", "limits", "added", "limits"], result.stdout
    assert any(line.startswith("limits check in-process: ") for line in lines), result.stdout


def test_soak_benchmark_samples_and_judges() -> None:
    result = run_benchmark("soak.py", "--minutes", "0.15", "--interval", "1", "--streams", "2")
    lines = result.stdout.splitlines()
    header = lines.index(f"{'seconds':>7} {'requests':>9} {'RSS MiB':>8} {'fds':>6} {'tasks':>6}")
    rows = [line.split() for line in lines[header + 1 :]]
    samples = [row for row in rows if row and row[0].isdigit()]
    assert len(samples) >= 3, result.stdout
    assert all(int(fds) > 0 and int(tasks) > 0 for *_, fds, tasks in samples)
    done = next(line for line in lines if line.startswith("done: "))
    for kind in ("stream", "completion", "disconnect", "upload+download"):
        assert f" {kind}" in done, done
    assert not any(line.startswith("failed ") for line in lines), result.stdout
    verdicts = [line.split(":")[0] for line in lines if line.startswith("verdict ")]
    assert verdicts == ["verdict rss_mib", "verdict fds", "verdict tasks"], result.stdout


def test_blobs_benchmark_measures_both_stores() -> None:
    # No endpoint: the benchmark starts its own moto server, as it does for a person.
    result = run_benchmark(
        "blobs.py", "--small", "20", "--large", "2", "--large-size", str(3 * 1024 * 1024)
    )
    rows = [line.split()[:3] for line in result.stdout.splitlines()[1:]]
    assert rows == [
        [store, *phase.split()]
        for store in ("directory", "s3")
        for phase in ("write small", "read small", "write large", "read large")
    ], result.stdout
    assert all("peak RSS +" in line for line in result.stdout.splitlines()[1:])


def test_model_relay_benchmark_measures_every_api() -> None:
    result = run_benchmark(
        "model_relay.py", "--levels", "1", "--calls", "5", "--rounds", "1", "--chunks", "20"
    )
    rows = [line.split()[:3] for line in result.stdout.splitlines()[2:]]
    assert rows == [
        [api, "1", path]
        for api in ("anthropic", "responses", "gemini")
        for path in ("direct", "relay", "added")
    ], result.stdout


def _engine_and_agents() -> None:
    if not (os.environ.get("JETTY_PROXY_DOCKER_HOST") or os.environ.get("DOCKER_HOST")):
        unavailable("no Docker engine is set", "scripts/ci/ starts one")
    if not os.environ.get("JETTY_PROXY_AGENT_CACHE_DIR"):
        unavailable("JETTY_PROXY_AGENT_CACHE_DIR is not set", "scripts/ci/ installs the agents")


@pytest.mark.docker
@pytest.mark.agents
def test_many_runs_benchmark_completes_and_leaves_no_container() -> None:
    _engine_and_agents()
    result = run_benchmark("many_runs.py", "--runs", "2", "--settle", "5")
    lines = result.stdout.splitlines()
    assert "completed 2, failed 0" in lines, result.stdout
    assert "dropped 2, not dropped 0" in lines, result.stdout
    assert "containers left 5 s after the last disconnect: 0" in lines, result.stdout


@pytest.mark.docker
@pytest.mark.agents
def test_run_start_benchmark_measures_each_mode() -> None:
    _engine_and_agents()
    result = run_benchmark("run_start.py", "--runs", "1", "--agents", "codex")
    rows = [line.split()[:2] for line in result.stdout.splitlines() if line.startswith("codex")]
    assert rows == [["codex", mode] for mode in ("raw", "cold", "warm")] * 2, result.stdout
