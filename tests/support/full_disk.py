"""A real, small filesystem that tests can fill: a tmpfs mounted for the duration of a test.

Mounting needs root (CI runs as root). Elsewhere these tests skip — except under ``CI=true``,
where they fail, so that CI cannot go green without them.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.ci import unavailable


@contextmanager
def small_filesystem(directory: Path, size: str = "16m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``directory`` (made if missing) until the block ends."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs: {mounted.stderr.strip()}", "CI runs the tests as root")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until its filesystem is full; returns the file (delete it
    to free the space)."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as handle:
        try:
            while handle.write(b"\0" * 65536):
                pass
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler
