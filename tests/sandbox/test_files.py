from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from proxy.sandbox.base import SkipReason, UnsafePathError
from proxy.sandbox.files import (
    ArchiveExtractor,
    CopyBudget,
    clean_absolute_dir,
    clean_relative_path,
    copy_tree,
)


@pytest.mark.parametrize(
    "name", ["", "/etc/passwd", "../x", "a/../../b", "a/..", "a\\b", "a\0b", ".", "./", "//"]
)
def test_unsafe_relative_names_are_rejected(name: str) -> None:
    with pytest.raises(UnsafePathError):
        clean_relative_path(name)


def test_relative_names_are_normalised() -> None:
    assert str(clean_relative_path("./a//b/./c.txt")) == "a/b/c.txt"
    assert str(clean_absolute_dir("/app/results/")) == "/app/results"
    assert str(clean_absolute_dir("/")) == "/"
    with pytest.raises(UnsafePathError):
        clean_absolute_dir("app")
    with pytest.raises(UnsafePathError):
        clean_absolute_dir("/app/../etc")


def test_budget_skips_whole_files_and_counts_past_the_record_cap() -> None:
    budget = CopyBudget(max_bytes=10, max_files=2)
    assert budget.admit("a", 6)
    assert not budget.admit("b", 5)
    assert budget.admit("c", 4)
    assert not budget.admit("d", 0)
    assert [(s.path, s.reason) for s in budget.report.skipped] == [
        ("b", SkipReason.TOO_LARGE),
        ("d", SkipReason.TOO_MANY_FILES),
    ]
    for n in range(2000):
        budget.skip(str(n), SkipReason.SYMLINK)
    assert len(budget.report.skipped) == 1000
    assert budget.report.skipped_unrecorded == 1002


def _results_tree(root: Path) -> Path:
    src = root / "results"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"aaaa")
    (src / "sub" / "b.txt").write_bytes(b"bb")
    (src / "big.bin").write_bytes(b"x" * 100)
    (src / "passwd").symlink_to("/etc/passwd")
    (src / "etc").symlink_to("/etc", target_is_directory=True)
    os.mkfifo(src / "pipe")
    return src


def test_copy_tree_never_follows_links_and_keeps_caps(tmp_path: Path) -> None:
    src = _results_tree(tmp_path)
    dest = tmp_path / "out"
    budget = CopyBudget(max_bytes=50, max_files=10)
    copy_tree(src, dest, budget)
    assert sorted((f.path, f.size) for f in budget.report.files) == [
        ("a.txt", 4),
        ("sub/b.txt", 2),
    ]
    assert {(s.path, s.reason) for s in budget.report.skipped} == {
        ("big.bin", SkipReason.TOO_LARGE),
        ("passwd", SkipReason.SYMLINK),
        ("etc", SkipReason.SYMLINK),
        ("pipe", SkipReason.SPECIAL),
    }
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == [
        "a.txt",
        "sub",
        "sub/b.txt",
    ]


def test_copy_tree_file_cap_and_missing_or_linked_source(tmp_path: Path) -> None:
    src = _results_tree(tmp_path)
    budget = CopyBudget(max_bytes=1000, max_files=1)
    copy_tree(src, tmp_path / "out", budget)
    assert [f.path for f in budget.report.files] == ["a.txt"]
    assert SkipReason.TOO_MANY_FILES in {s.reason for s in budget.report.skipped}

    missing = CopyBudget(10, 10)
    copy_tree(tmp_path / "nope", tmp_path / "out2", missing)
    assert missing.report.files == [] and missing.report.skipped == []

    (tmp_path / "link").symlink_to(src)
    linked = CopyBudget(1000, 10)
    copy_tree(tmp_path / "link", tmp_path / "out3", linked)
    assert linked.report.files == []
    assert [(s.path, s.reason) for s in linked.report.skipped] == [(".", SkipReason.SYMLINK)]


def _tar(entries: list[tuple[str, bytes, bytes | None, str]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, data, link in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            info.size = len(data or b"")
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def test_extractor_applies_copy_rules(tmp_path: Path) -> None:
    raw = _tar(
        [
            ("results/", tarfile.DIRTYPE, None, ""),
            ("results/ok.txt", tarfile.REGTYPE, b"ok", ""),
            ("results/d/nested.txt", tarfile.REGTYPE, b"nested", ""),
            ("results/pw", tarfile.SYMTYPE, None, "/etc/passwd"),
            ("results/hl", tarfile.LNKTYPE, None, "results/ok.txt"),
            ("results/../../evil", tarfile.REGTYPE, b"evil", ""),
            ("other/x", tarfile.REGTYPE, b"x", ""),
            ("results/dev", tarfile.CHRTYPE, None, ""),
            ("results/huge", tarfile.REGTYPE, b"h" * 5000, ""),
            ("results/ok.txt/under-a-file", tarfile.REGTYPE, b"c", ""),
        ]
    )
    dest = tmp_path / "out"
    budget = CopyBudget(max_bytes=1000, max_files=10)
    extractor = ArchiveExtractor(dest, budget, "results", read_limit=1 << 20)
    for start in range(0, len(raw), 700):
        extractor.feed(raw[start : start + 700])
    extractor.close()
    assert [(f.path, f.size) for f in budget.report.files] == [("ok.txt", 2), ("d/nested.txt", 6)]
    assert [(s.path, s.reason) for s in budget.report.skipped] == [
        ("pw", SkipReason.SYMLINK),
        ("hl", SkipReason.LINK),
        ("results/../../evil", SkipReason.UNSAFE_PATH),
        ("other/x", SkipReason.UNSAFE_PATH),
        ("dev", SkipReason.SPECIAL),
        ("huge", SkipReason.TOO_LARGE),
        ("ok.txt/under-a-file", SkipReason.CONFLICT),
    ]
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == [
        "d",
        "d/nested.txt",
        "ok.txt",
    ]
    assert not (tmp_path / "evil").exists()


def test_extractor_stops_at_read_limit_and_drops_partial_file(tmp_path: Path) -> None:
    raw = _tar(
        [("r/a", tarfile.REGTYPE, b"a" * 100, ""), ("r/b", tarfile.REGTYPE, b"b" * 9000, "")]
    )
    budget = CopyBudget(max_bytes=1 << 20, max_files=10)
    extractor = ArchiveExtractor(tmp_path, budget, "r", read_limit=4096)
    for start in range(0, len(raw), 1024):
        extractor.feed(raw[start : start + 1024])
        if extractor.stopped:
            break
    extractor.close()
    assert [f.path for f in budget.report.files] == ["a"]
    assert [(s.path, s.reason) for s in budget.report.skipped] == [
        ("b", SkipReason.ARCHIVE_TOO_LARGE)
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
