"""Turn the engine's JSON progress messages into a few readable lines. Pure: no I/O.

The engine streams one JSON object per line while it pulls (``status``, ``id``,
``progressDetail``) or builds (``stream``, ``aux``, ``error``). Forwarding each of them would
flood a chat stream with hundreds of near-identical lines, so `PullProgress` sums the layers
into one line at most every ``interval`` seconds and `BuildLog` batches log lines the same
way, keeping the tail for the error message of a failed build. ``clock`` is injectable so
that tests need not sleep.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["BuildLog", "PullProgress", "megabytes"]

Clock = Callable[[], float]
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_STEP = re.compile(r"^Step \d+/\d+ : ")
_IMAGE_ID = re.compile(r"[0-9a-f]{12,64}")


def megabytes(size: int) -> str:
    """``12.3 MB`` (decimal, as the engine's own progress bars count)."""
    return f"{size / 1_000_000:.1f} MB"


@dataclass
class _Layer:
    total: int = 0
    current: int = 0
    done: bool = False
    present: bool = False


class PullProgress:
    """Summarises ``POST /images/create`` messages for one image."""

    def __init__(self, reference: str, *, interval: float = 0.5, clock: Clock = time.monotonic):
        self.reference = reference
        self.digest: str | None = None
        self.error: str | None = None
        self._layers: dict[str, _Layer] = {}
        self._interval = interval
        self._clock = clock
        self._last = -interval
        self._started = clock()

    def feed(self, message: Mapping[str, Any]) -> str | None:
        """Take one message; return a line to show now, or ``None``."""
        if message.get("error") or message.get("errorDetail"):
            detail = message.get("errorDetail")
            text = detail.get("message") if isinstance(detail, dict) else None
            self.error = str(text or message.get("error"))
            return None
        status = str(message.get("status") or "")
        layer_id = message.get("id")
        if status.startswith("Digest: "):
            self.digest = status.removeprefix("Digest: ").strip()
            return None
        if status.startswith("Pulling from "):
            return self._emit(f"Pulling {self.reference} ...", force=True)
        if not isinstance(layer_id, str) or status.startswith("Status: "):
            return None
        layer = self._layers.setdefault(layer_id, _Layer())
        detail = message.get("progressDetail") or {}
        if status == "Downloading" and isinstance(detail, dict):
            layer.total = int(detail.get("total") or layer.total)
            layer.current = int(detail.get("current") or layer.current)
        elif status in ("Download complete", "Verifying Checksum"):
            layer.current = layer.total
        elif status == "Pull complete":
            layer.current = layer.total
            layer.done = True
            return self._emit(self.line(), force=False, milestone=True)
        elif status == "Already exists":
            layer.done = layer.present = True
            return None
        return self._emit(self.line(), force=False)

    def line(self) -> str:
        """The current state in one line: layers, bytes and percent."""
        layers = list(self._layers.values())
        done = sum(layer.done for layer in layers)
        present = sum(layer.present for layer in layers)
        total = sum(layer.total for layer in layers)
        current = sum(min(layer.current, layer.total) for layer in layers)
        text = f"Pulling {self.reference}: {done}/{len(layers)} layers done"
        if present:
            text += f" ({present} already present)"
        if total:
            text += f", {megabytes(current)} of {megabytes(total)} ({100 * current // total}%)"
        return text

    def summary(self) -> str:
        """The closing line, once the pull has ended."""
        total = sum(layer.total for layer in self._layers.values())
        elapsed = self._clock() - self._started
        digest = f", {self.digest}" if self.digest else ""
        return (
            f"Pulled {self.reference} ({len(self._layers)} layers, {megabytes(total)} downloaded"
            f" in {elapsed:.1f} s{digest})"
        )

    def _emit(self, text: str, *, force: bool, milestone: bool = False) -> str | None:
        now = self._clock()
        # A finished layer is worth a line sooner, but not a burst of them.
        wait = self._interval / 4 if milestone else self._interval
        if not force and now - self._last < wait:
            return None
        self._last = now
        return text


class BuildLog:
    """Collects ``POST /build`` messages: log lines to forward, the tail, the image id.

    ``created`` lists the intermediate images this build made (not those it took from the
    build cache), so that a failed build can remove what it left behind.
    """

    def __init__(
        self, *, interval: float = 0.5, tail_lines: int = 30, clock: Clock = time.monotonic
    ):
        self.image_id: str | None = None
        self.error: str | None = None
        self.created: list[str] = []
        self._cached_step = False
        self._pending: list[str] = []
        self._partial = ""
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._interval = interval
        self._clock = clock
        self._last = clock()

    def feed(self, message: Mapping[str, Any]) -> str | None:
        """Take one message; return the lines to show now (joined), or ``None``."""
        if message.get("error") or message.get("errorDetail"):
            detail = message.get("errorDetail")
            text = detail.get("message") if isinstance(detail, dict) else None
            self.error = str(text or message.get("error"))
            return None
        aux = message.get("aux")
        if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
            self.image_id = aux["ID"]
        stream = message.get("stream")
        step = False
        if isinstance(stream, str):
            text = self._partial + _ANSI.sub("", stream).replace("\r", "\n")
            *lines, self._partial = text.split("\n")
            for line in (line.rstrip() for line in lines):
                if line.startswith(" ---> "):
                    self._note_step_result(line.removeprefix(" ---> ").strip())
                    continue
                if not line or line.startswith("Removing intermediate container"):
                    continue
                if _STEP.match(line):
                    step = True
                    # A FROM step "makes" the base image: never one to clean up.
                    self._cached_step = _STEP.sub("", line).upper().startswith("FROM ")
                self._pending.append(line)
                self._tail.append(line)
        elif isinstance(message.get("status"), str):
            # The builder pulling a missing base image.
            line = f"{message['status']} {message.get('id') or ''}".rstrip()
            if "Downloading" not in line and "Extracting" not in line:
                self._pending.append(line)
        if self._pending and (step or self._clock() - self._last >= self._interval):
            return self.flush()
        return None

    def flush(self) -> str | None:
        """Whatever is still buffered, or ``None``."""
        if self._partial.strip():
            self._pending.append(self._partial.rstrip())
            self._tail.append(self._partial.rstrip())
            self._partial = ""
        if not self._pending:
            return None
        self._last = self._clock()
        text = "\n".join(self._pending)
        self._pending = []
        return text

    def _note_step_result(self, text: str) -> None:
        if text == "Using cache":
            self._cached_step = True
        elif _IMAGE_ID.fullmatch(text):
            if not self._cached_step:
                self.created.append(text)
            self._cached_step = False

    def tail(self) -> str:
        """The last lines of the log, for the message of a failed build."""
        return "\n".join(self._tail)
