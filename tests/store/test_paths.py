"""Path and filename rules for everything a client names."""

from __future__ import annotations

import io
import unicodedata
import zipfile
from urllib.parse import quote, unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.store.paths import (
    UnsafePath,
    clean_prefix,
    clean_relative_path,
    portable_path,
    sanitize_filename,
    shown,
)


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


@pytest.mark.parametrize(
    ("raw", "portable"),
    [
        ("report.md", "report.md"),
        ("dir/ünïcode ✓.txt", "dir/ünïcode ✓.txt"),
        ("esc\x1b[31mred.txt", "esc_[31mred.txt"),
        ("bell\x07.txt", "bell_.txt"),
        ("line\nfeed.txt", "line_feed.txt"),
        ("tab\there", "tab_here"),
        ("c1\x85next", "c1_next"),
        ("C:x.txt", "C_x.txt"),
        ("dir/C:x.txt", "dir/C:x.txt"),  # only a leading drive means anything
        ("rtl\u202etxt.exe", "rtl_txt.exe"),
        ("isolate\u2066x\u2069.md", "isolate_x_.md"),
        ("mark\u200e\u200f\u061c", "mark___"),
        ("sep\u2028\u2029", "sep__"),
        ("back\\slash", "back_slash"),
        ("not-utf8-\udcff\udcfe.bin", "not-utf8-\ufffd\ufffd.bin"),
    ],
)
def test_portable_result_paths(raw: str, portable: str) -> None:
    assert portable_path(raw) == portable


def test_a_path_too_long_for_a_link_is_refused() -> None:
    with pytest.raises(UnsafePath):
        portable_path("x" * 1025)


def test_shown_names_escape_what_a_terminal_would_act_on() -> None:
    assert shown("esc\x1b[2J\u202etxt'") == "'esc\\x1b[2J\\u202etxt\\''"
    assert shown("bad\udcff") == "'bad\\xff'"
    assert shown("plain ü") == "'plain ü'"


segments = st.text(
    st.characters(codec=None, exclude_characters="/"), min_size=1, max_size=12
).filter(lambda segment: segment not in (".", ".."))


@given(st.lists(segments, min_size=1, max_size=5).map("/".join))
def test_a_portable_path_survives_a_url_a_zip_and_a_terminal(path: str) -> None:
    portable = portable_path(path)
    assert clean_relative_path(portable) == portable
    assert portable_path(portable) == portable  # nothing left to replace
    assert unquote(quote(portable.encode())) == portable  # UTF-8 all the way
    assert not any(unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp") for char in portable)
    assert not set(portable) & set(
        "\\\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
    )
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as writer:
        writer.writestr(portable, b"x")
    with zipfile.ZipFile(archive) as reader:
        assert reader.namelist() == [portable]


@given(
    st.text(
        st.characters(
            codec="utf-8", categories=("L", "N", "P", "S", "Zs"), exclude_characters="/\\:"
        ),
        min_size=1,
        max_size=20,
    )
)
def test_a_name_that_needs_nothing_is_kept(name: str) -> None:
    if name.strip(".") and name not in (".", ".."):
        assert portable_path(name) == name
