"""The benchmarks still run: a few requests each, figures not judged (they are reported)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
