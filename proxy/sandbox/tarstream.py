"""Tar archives for the Docker archive API: build one for upload, read one incrementally.

`TarReader` is a push parser: `feed` it chunks as they arrive and it returns events
(`MemberStart`, payload ``bytes``, `MemberEnd`), so a large archive never has to be held in
memory and a caller can stop reading at any point. It understands ustar, POSIX pax (``x``
records for path, linkpath and size) and GNU long names (``L``/``K``), which covers what
Docker's Go archive writer emits. It never touches the file system.
"""

from __future__ import annotations

import enum
import io
import os
import stat
import tarfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

BLOCK = 512
_MAX_META_BYTES = 1024 * 1024


class TarFormatError(ValueError):
    """The archive is malformed or truncated."""


class MemberKind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    DEVICE = "device"
    FIFO = "fifo"
    OTHER = "other"


_KINDS = {
    b"0": MemberKind.FILE,
    b"\0": MemberKind.FILE,
    b"7": MemberKind.FILE,
    b"5": MemberKind.DIR,
    b"2": MemberKind.SYMLINK,
    b"1": MemberKind.HARDLINK,
    b"3": MemberKind.DEVICE,
    b"4": MemberKind.DEVICE,
    b"6": MemberKind.FIFO,
}


@dataclass(frozen=True)
class MemberStart:
    """A member's header. Its payload (``size`` bytes) follows as ``bytes`` events."""

    name: str
    kind: MemberKind
    size: int
    mode: int
    linkname: str = ""


@dataclass(frozen=True)
class MemberEnd:
    """The current member's payload is complete."""


TarEvent = MemberStart | MemberEnd | bytes


class TarReader:
    """Incremental tar parser; see the module docstring."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._remaining = 0  # payload bytes of the current member still to emit
        self._padding = 0  # bytes to skip after the payload
        self._in_member = False
        self._meta_kind: bytes | None = None  # collecting a pax/GNU meta record
        self._meta = bytearray()
        self._pending: dict[str, str] = {}  # overrides from pax/GNU records for the next header
        self.finished = False

    def feed(self, data: bytes) -> list[TarEvent]:
        self._buffer += data
        events: list[TarEvent] = []
        while not self.finished:
            if self._remaining:
                if not self._buffer:
                    break
                piece = bytes(self._buffer[: self._remaining])
                del self._buffer[: len(piece)]
                self._remaining -= len(piece)
                if self._meta_kind is not None:
                    self._meta += piece
                else:
                    events.append(piece)
                continue
            if self._padding:
                skipped = min(self._padding, len(self._buffer))
                del self._buffer[:skipped]
                self._padding -= skipped
                if self._padding:
                    break
            if self._in_member:
                self._in_member = False
                self._finish_member(events)
                continue
            if len(self._buffer) < BLOCK:
                break
            header = bytes(self._buffer[:BLOCK])
            del self._buffer[:BLOCK]
            self._read_header(header, events)
        return events

    def close(self) -> None:
        """Raise `TarFormatError` when the archive ended inside a member."""
        if self._in_member or self._remaining or self._padding:
            raise TarFormatError("archive truncated inside a member")
        if self._buffer and not self.finished:
            raise TarFormatError(f"archive ends with a partial block ({len(self._buffer)} bytes)")

    def _finish_member(self, events: list[TarEvent]) -> None:
        if self._meta_kind is None:
            events.append(MemberEnd())
            return
        kind, raw = self._meta_kind, bytes(self._meta)
        self._meta_kind = None
        self._meta.clear()
        if kind == b"x":
            self._pending.update(_parse_pax(raw))
        elif kind == b"L":
            self._pending["path"] = _cstr(raw)
        elif kind == b"K":
            self._pending["linkpath"] = _cstr(raw)

    def _read_header(self, header: bytes, events: list[TarEvent]) -> None:
        if header == bytes(BLOCK):
            self.finished = True
            return
        _check_checksum(header)
        typeflag = header[156:157]
        size = _number(header[124:136])
        if typeflag in (b"x", b"g", b"L", b"K"):
            if size > _MAX_META_BYTES:
                raise TarFormatError(f"tar metadata record of {size} bytes is too large")
            # Global pax records ('g') are read and dropped: nothing we need lives there.
            self._meta_kind = typeflag
            self._start_payload(size)
            return
        name = _cstr(header[0:100])
        if header[257:262] == b"ustar" and (prefix := _cstr(header[345:500])):
            name = f"{prefix}/{name}"
        pending, self._pending = self._pending, {}
        name = pending.get("path", name)
        linkname = pending.get("linkpath", _cstr(header[157:257]))
        if "size" in pending:
            size = _pax_int(pending["size"])
        kind = _KINDS.get(typeflag, MemberKind.OTHER)
        if kind not in (MemberKind.FILE, MemberKind.OTHER):
            size = 0  # like tarfile: only regular and unknown members carry a payload
        events.append(MemberStart(name, kind, size, _number(header[100:108]) & 0o7777, linkname))
        self._start_payload(size)

    def _start_payload(self, size: int) -> None:
        self._remaining = size
        self._padding = -size % BLOCK
        self._in_member = True


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def _number(field: bytes) -> int:
    if field and field[0] & 0x80:
        # GNU base-256: big-endian two's complement with the top bit as the marker.
        value = int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
        if field[0] & 0x40:
            raise TarFormatError("negative number in tar header")
        return value
    text = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError as exc:
        raise TarFormatError(f"bad octal field {field!r} in tar header") from exc


def _pax_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise TarFormatError(f"bad pax size {text!r}") from exc
    if value < 0:
        raise TarFormatError("negative pax size")
    return value


def _check_checksum(header: bytes) -> None:
    expected = _number(header[148:156])
    blanked = header[:148] + b" " * 8 + header[156:]
    if expected != sum(blanked):
        raise TarFormatError("tar header checksum mismatch")


def _parse_pax(raw: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(raw):
        space = raw.find(b" ", pos)
        if space == -1:
            raise TarFormatError("malformed pax record")
        try:
            length = int(raw[pos:space])
        except ValueError as exc:
            raise TarFormatError("malformed pax record length") from exc
        if length <= space - pos or pos + length > len(raw):
            raise TarFormatError("malformed pax record length")
        key, sep, value = raw[space + 1 : pos + length - 1].partition(b"=")
        if not sep:
            raise TarFormatError("malformed pax record")
        records[key.decode("utf-8", errors="replace")] = value.decode("utf-8", errors="replace")
        pos += length
    return records


@dataclass(frozen=True)
class Owner:
    """Numeric owner for archive members."""

    uid: int = 0
    gid: int = 0


def write_archive(
    out: IO[bytes],
    dirs: Iterable[PurePosixPath],
    files: Mapping[PurePosixPath, bytes | Path],
    owner: Owner = Owner(),
) -> None:
    """Write a tar of ``dirs`` (in the given order) and then ``files`` to ``out``.

    Names must already be validated relative paths. Parent directories of each file are added
    (once, before the file) unless listed in ``dirs``. ``Path`` values are read from the host
    and must be regular files; their executable bit is kept.
    """
    written: set[PurePosixPath] = set()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:

        def add_dir(path: PurePosixPath) -> None:
            if path in written or str(path) == ".":
                return
            add_dir(path.parent)
            info = _info(path, owner, tarfile.DIRTYPE, 0o755)
            archive.addfile(info)
            written.add(path)

        for directory in dirs:
            add_dir(directory)
        for name, content in files.items():
            add_dir(name.parent)
            if isinstance(content, bytes):
                info = _info(name, owner, tarfile.REGTYPE, 0o644)
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
                continue
            if not stat.S_ISREG(content.stat().st_mode):  # checked first: a FIFO would block
                raise ValueError(f"{content} is not a regular file")
            with content.open("rb") as source:
                st = os.fstat(source.fileno())
                mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
                info = _info(name, owner, tarfile.REGTYPE, mode)
                info.size = st.st_size
                archive.addfile(info, source)


def _info(name: PurePosixPath, owner: Owner, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(str(name))
    info.type = kind
    info.mode = mode
    info.uid, info.gid = owner.uid, owner.gid
    info.mtime = int(time.time())
    return info
