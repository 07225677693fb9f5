"""Names from a sandbox and tar streams from its engine: nothing lands outside its directory,
and what goes in comes out the same, however the stream is cut."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from hypothesis import given
from hypothesis import strategies as st

from proxy.sandbox.base import UnsafePathError
from proxy.sandbox.files import (
    ArchiveExtractor,
    CopyBudget,
    clean_absolute_dir,
    clean_relative_path,
)
from proxy.sandbox.tarstream import (
    MemberEnd,
    MemberKind,
    MemberStart,
    TarFormatError,
    TarReader,
    write_archive,
)

path_text = st.text(alphabet="ab/.\\\x00 é", max_size=24) | st.text(max_size=24)
components = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="/\x00"),
    min_size=1,
    max_size=12,
).filter(lambda part: part not in (".", ".."))
relative_paths = st.lists(components, min_size=1, max_size=3).map(
    lambda parts: PurePosixPath(*parts)
)


def _no_path_is_a_directory_of_another(paths: list[PurePosixPath]) -> bool:
    return not any(a != b and a in b.parents for a in paths for b in paths)


trees = st.dictionaries(relative_paths, st.binary(max_size=700), max_size=6).filter(
    lambda tree: _no_path_is_a_directory_of_another(list(tree))
)


def _splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@given(path_text)
def test_a_clean_sandbox_name_stays_inside(name: str) -> None:
    try:
        rel = clean_relative_path(name)
    except UnsafePathError:
        return
    assert rel.parts and not rel.is_absolute()
    assert ".." not in rel.parts and "." not in rel.parts
    assert os.path.normpath(os.path.join("/app/results", rel)).startswith("/app/results/")
    assert clean_relative_path(str(rel)) == rel


@given(path_text)
def test_a_clean_sandbox_directory_is_absolute_without_climbing(path: str) -> None:
    try:
        directory = clean_absolute_dir(path)
    except UnsafePathError:
        return
    assert directory.is_absolute() and ".." not in directory.parts
    assert os.path.normpath(directory) == str(directory)


@given(trees, st.lists(st.integers(min_value=0), max_size=8))
def test_an_archive_reads_back_the_same_however_it_is_cut(
    tree: dict[PurePosixPath, bytes], cuts: list[int]
) -> None:
    out = io.BytesIO()
    write_archive(out, [], tree)
    reader = TarReader()
    events = [event for piece in _splits(out.getvalue(), cuts) for event in reader.feed(piece)]
    reader.close()
    assert reader.finished
    files: dict[PurePosixPath, bytes] = {}
    current: PurePosixPath | None = None
    for event in events:
        if isinstance(event, MemberStart):
            current = PurePosixPath(event.name) if event.kind is MemberKind.FILE else None
            if current is not None:
                files[current] = b""
        elif isinstance(event, MemberEnd):
            current = None
        elif current is not None:
            files[current] += event
    assert files == tree


hostile_names = st.sampled_from(
    ["../x", "results/../../x", "/etc/x", "results/a/../../../x", "results//./a", "x", "results"]
) | st.builds(
    lambda parts: "/".join(parts),
    st.lists(st.sampled_from(["results", "..", ".", "", "a", "b\\c"]), min_size=1, max_size=5),
)
members = st.tuples(
    hostile_names,
    st.sampled_from(
        [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE]
    ),
    st.binary(max_size=300),
)


@given(st.lists(members, max_size=8), st.lists(st.integers(min_value=0), max_size=6))
def test_extraction_never_writes_outside_its_destination(
    build: list[tuple[str, bytes, bytes]], cuts: list[int]
) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, data in build:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                info.linkname = "../../../etc/passwd"
                archive.addfile(info)
    with tempfile.TemporaryDirectory() as top:
        dest = Path(top) / "a" / "b" / "dest"
        dest.mkdir(parents=True)
        budget = CopyBudget(max_bytes=10_000, max_files=100)
        extractor = ArchiveExtractor(dest, budget, "results", read_limit=1_000_000)
        for piece in _splits(out.getvalue(), cuts):
            extractor.feed(piece)
        extractor.close()
        written = {
            Path(root, name) for root, dirs, names in os.walk(top) for name in [*dirs, *names]
        }
        assert all(path in dest.parents or dest in path.parents or path == dest for path in written)
        assert not any(path.is_symlink() for path in written)
        for copied in budget.report.files:
            target = dest / copied.path
            assert target.is_file() and target.stat().st_size == copied.size


@given(st.binary(max_size=2048), st.lists(st.integers(min_value=0), max_size=4))
def test_any_bytes_are_an_archive_or_a_format_error(data: bytes, cuts: list[int]) -> None:
    reader = TarReader()
    try:
        for piece in _splits(data, cuts):
            reader.feed(piece)
        reader.close()
    except TarFormatError:
        pass


@given(trees.filter(bool), st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_a_corrupted_archive_is_read_or_refused_but_nothing_else(
    tree: dict[PurePosixPath, bytes], where: int, byte: int
) -> None:
    out = io.BytesIO()
    write_archive(out, [], tree)
    data = bytearray(out.getvalue())
    data[where % len(data)] = byte
    reader = TarReader()
    try:
        reader.feed(bytes(data))
        reader.close()
    except TarFormatError:
        pass
