"""Path and filename rules for everything a client names."""

from __future__ import annotations

import pytest

from proxy.store.paths import UnsafePath, clean_prefix, clean_relative_path, sanitize_filename


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("a/b.txt", "a/b.txt"),
        ("a//./b/", "a/b"),
        ("./x", "x"),
        ("dir/file name ü.md", "dir/file name ü.md"),
        ("a..b/..c", "a..b/..c"),
    ],
)
def test_clean_paths(raw: str, clean: str) -> None:
    assert clean_relative_path(raw) == clean


@pytest.mark.parametrize(
    "raw",
    [
        "",
        ".",
        "/etc/passwd",
        "../x",
        "a/../../x",
        "a/..",
        "a\\b",
        "a\x00b",
        "C:x",
        "x\ny",
        "a" * 2000,
    ],
)
def test_unsafe_paths(raw: str) -> None:
    with pytest.raises(UnsafePath):
        clean_relative_path(raw)


def test_prefix_keeps_its_trailing_slash() -> None:
    assert clean_prefix("alpha/data/") == "alpha/data/"
    assert clean_prefix("alpha/data") == "alpha/data"
    with pytest.raises(UnsafePath):
        clean_prefix("alpha/../beta/")


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\secret.txt", "secret.txt"),
        (".bashrc", "bashrc"),
        ("..", "file"),
        ("", "file"),
        (None, "file"),
        ('a<b>:"c"|?*.txt', "a_b___c____.txt"),
        ("nul\x00byte.txt", "nul_byte.txt"),
        ("tab\there", "tab_here"),
    ],
)
def test_sanitize_filename(raw: str | None, safe: str) -> None:
    assert sanitize_filename(raw) == safe


def test_long_filenames_keep_their_extension() -> None:
    name = sanitize_filename("é" * 300 + ".tar")
    assert name.endswith(".tar") and len(name.encode()) <= 200
