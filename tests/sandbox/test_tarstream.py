from __future__ import annotations

import io
import tarfile
from pathlib import Path, PurePosixPath

import pytest

from proxy.sandbox.tarstream import (
    MemberEnd,
    MemberKind,
    MemberStart,
    Owner,
    TarEvent,
    TarFormatError,
    TarReader,
    write_archive,
)


def _archive(build: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as archive:
        for info, data in build:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _member(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = ""
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def _read(raw: bytes, chunk: int) -> list[tuple[MemberStart, bytes]]:
    reader = TarReader()
    events: list[TarEvent] = []
    for start in range(0, len(raw), chunk):
        events += reader.feed(raw[start : start + chunk])
    reader.close()
    members: list[tuple[MemberStart, bytes]] = []
    for event in events:
        if isinstance(event, MemberStart):
            members.append((event, b""))
        elif isinstance(event, bytes):
            members[-1] = (members[-1][0], members[-1][1] + event)
        else:
            assert isinstance(event, MemberEnd)
    return members


LONG = "deep/" + "d" * 120 + "/" + "ü" * 70 + ".txt"


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("chunk", [1, 100, 512, 513, 1 << 20])
def test_reader_matches_tarfile(fmt: int, chunk: int) -> None:
    entries = [
        _member("results/", tarfile.DIRTYPE),
        _member("results/a.txt", data=b"hello"),
        _member("results/big.bin", data=bytes(range(256)) * 9),
        _member("results/pw", tarfile.SYMTYPE, link="/etc/passwd"),
        _member("results/hard", tarfile.LNKTYPE, link="results/a.txt"),
        _member("results/dev", tarfile.CHRTYPE),
        _member("results/fifo", tarfile.FIFOTYPE),
    ]
    if fmt != tarfile.USTAR_FORMAT:
        entries.append(_member(LONG, data=b"long"))
    members = _read(_archive(entries, fmt), chunk)
    kinds = [(m.name, m.kind, data) for m, data in members]
    expected = [
        ("results/", MemberKind.DIR, b""),
        ("results/a.txt", MemberKind.FILE, b"hello"),
        ("results/big.bin", MemberKind.FILE, bytes(range(256)) * 9),
        ("results/pw", MemberKind.SYMLINK, b""),
        ("results/hard", MemberKind.HARDLINK, b""),
        ("results/dev", MemberKind.DEVICE, b""),
        ("results/fifo", MemberKind.FIFO, b""),
    ]
    if fmt != tarfile.USTAR_FORMAT:
        expected.append((LONG, MemberKind.FILE, b"long"))
    assert kinds == expected
    assert members[3][0].linkname == "/etc/passwd"


def test_reader_rejects_corruption_and_truncation() -> None:
    raw = bytearray(_archive([_member("a", data=b"x" * 600)], tarfile.PAX_FORMAT))
    truncated = TarReader()
    truncated.feed(bytes(raw[:700]))
    with pytest.raises(TarFormatError, match="truncated"):
        truncated.close()
    raw[0] ^= 0xFF
    with pytest.raises(TarFormatError, match="checksum"):
        TarReader().feed(bytes(raw))
    partial = TarReader()
    partial.feed(b"\x1f\x8b" + b"\0" * 100)  # e.g. a gzip stream instead of a tar
    with pytest.raises(TarFormatError, match="partial block"):
        partial.close()


def test_reader_stops_at_end_of_archive() -> None:
    raw = _archive([_member("a", data=b"1")], tarfile.PAX_FORMAT)
    reader = TarReader()
    events = reader.feed(raw + b"garbage after the end")
    assert reader.finished
    assert [type(e) for e in events] == [MemberStart, bytes, MemberEnd]


def test_reader_rejects_oversized_pax_record() -> None:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = 10 * 1024 * 1024
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    with pytest.raises(TarFormatError, match="too large"):
        TarReader().feed(header)


def test_write_archive_round_trips_with_parents_owner_and_modes(tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_bytes(b"#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    out = io.BytesIO()
    write_archive(
        out,
        [PurePosixPath("app")],
        {PurePosixPath("app/in/a.txt"): b"A", PurePosixPath("app/in/run.sh"): script},
        Owner(1000, 1000),
    )
    out.seek(0)
    with tarfile.open(fileobj=out) as archive:
        infos = {i.name: i for i in archive.getmembers()}
        assert list(infos) == ["app", "app/in", "app/in/a.txt", "app/in/run.sh"]
        assert infos["app/in"].isdir()
        assert infos["app/in/run.sh"].mode == 0o755
        assert infos["app/in/a.txt"].mode == 0o644
        assert {(i.uid, i.gid) for i in infos.values()} == {(1000, 1000)}
        extracted = archive.extractfile("app/in/run.sh")
        assert extracted is not None
        assert extracted.read() == script.read_bytes()


def test_write_archive_refuses_non_regular_sources(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a regular file"):
        write_archive(io.BytesIO(), [], {PurePosixPath("x"): tmp_path})
