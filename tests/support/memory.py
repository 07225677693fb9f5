"""How far this process's memory rose: the kernel's peak RSS (VmHWM), reset at the start."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Rise:
    bytes: int = 0


@contextmanager
def peak_rss_rise() -> Iterator[Rise]:
    """Yields a `Rise` filled in when the block ends: its peak RSS minus the RSS it began at
    (every thread of the process, so also a live server running in it)."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    start = _status("VmRSS")
    rise = Rise()
    try:
        yield rise
    finally:
        rise.bytes = _status("VmHWM") - start


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)
