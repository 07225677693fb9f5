"""The benchmarks still run: a few requests each, figures not judged (they are reported)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_passthrough_benchmark_runs_every_path() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "passthrough.py"),
            *("--levels", "1,4", "--requests", "20", "--chunks", "20", "--bare"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for level in ("1", "4"):
        rows = [line.split()[1] for line in lines if line.split()[:1] == [level]]
        assert rows == ["upstream:", "direct", "proxy", "bare", "added", "bare"], result.stdout
    # At concurrency 1 the stand-in upstream gets only spare CPU, above it a normal share.
    assert "    1 upstream: idle priority, spare CPU only" in lines, result.stdout
    assert any(line.startswith("proxy peak RSS:") for line in lines)
