"""Pure helpers for process output: Docker's multiplexed frames, line splitting, tails.

Docker sends the output of a container started without a TTY as frames: an 8-byte header
``[stream, 0, 0, 0, size as 4 bytes big-endian]`` followed by ``size`` bytes of payload, where
stream is 0 (stdin), 1 (stdout) or 2 (stderr). Frames arrive split across chunks arbitrarily.
"""

from __future__ import annotations

import enum
import struct
from collections import deque

_HEADER = struct.Struct(">BxxxI")


class StreamKind(enum.IntEnum):
    STDIN = 0
    STDOUT = 1
    STDERR = 2


class FrameError(ValueError):
    """The byte stream is not a valid sequence of Docker frames."""


class FrameDecoder:
    """Incremental decoder: `feed` chunks, get ``(stream, payload)`` pairs back."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[StreamKind, bytes]]:
        self._buffer += data
        frames: list[tuple[StreamKind, bytes]] = []
        while len(self._buffer) >= _HEADER.size:
            stream, size = _HEADER.unpack_from(self._buffer)
            if stream not in (0, 1, 2):
                raise FrameError(f"unknown stream id {stream} in frame header")
            end = _HEADER.size + size
            if len(self._buffer) < end:
                break
            frames.append((StreamKind(stream), bytes(self._buffer[_HEADER.size : end])))
            del self._buffer[:end]
        return frames

    def close(self) -> None:
        """Raise `FrameError` when the stream stopped inside a frame."""
        if self._buffer:
            raise FrameError(f"stream ended inside a frame ({len(self._buffer)} bytes left)")


def encode_frame(stream: StreamKind, payload: bytes) -> bytes:
    """One frame as Docker would send it (used by tests and scripted engines)."""
    return _HEADER.pack(stream, len(payload)) + payload


class LineSplitter:
    """Split a byte stream into text lines.

    Lines are split on ``\\n`` in bytes before decoding, so a multi-byte character cut across
    chunks is never garbled; invalid UTF-8 becomes U+FFFD. A trailing ``\\r`` is dropped. A
    line longer than ``max_line_bytes`` is emitted in pieces so memory stays bounded.
    """

    def __init__(self, max_line_bytes: int = 32 * 1024 * 1024) -> None:
        self._buffer = bytearray()
        self._max = max_line_bytes

    def feed(self, data: bytes) -> list[str]:
        self._buffer += data
        lines: list[str] = []
        start = 0
        while (end := self._buffer.find(b"\n", start)) != -1:
            lines.append(_decode(self._buffer[start:end]))
            start = end + 1
        del self._buffer[:start]
        while len(self._buffer) > self._max:
            lines.append(_decode(self._buffer[: self._max]))
            del self._buffer[: self._max]
        return lines

    def flush(self) -> list[str]:
        """The unterminated last line, if any."""
        if not self._buffer:
            return []
        line = _decode(self._buffer)
        self._buffer.clear()
        return [line]


def _decode(raw: bytes | bytearray) -> str:
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return bytes(raw).decode("utf-8", errors="replace")


class TailBuffer:
    """Keep the last ``max_bytes`` bytes of a stream."""

    def __init__(self, max_bytes: int = 8192) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._max = max_bytes

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data[-self._max :])
        self._size += len(self._chunks[-1])
        while self._size - len(self._chunks[0]) >= self._max:
            self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        raw = b"".join(self._chunks)[-self._max :]
        return raw.decode("utf-8", errors="replace")
