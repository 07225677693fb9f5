"""Result names: portable, unique, and what changed is said in a form a terminal can show."""

from __future__ import annotations

from proxy.runs.artifacts import CollectedArtifacts, portable_names, results_markdown


def test_files_that_need_nothing_keep_their_names_and_renamed_ones_step_aside() -> None:
    names = portable_names(
        ["esc\x1b[31mred.txt", "esc_[31mred.txt", "plain.txt", "a\x07", "a_/b", "C:x.txt"]
    )
    assert names == {
        "esc_[31mred.txt": "esc_[31mred.txt",
        "plain.txt": "plain.txt",
        "a_/b": "a_/b",
        "C:x.txt": "C_x.txt",
        "esc\x1b[31mred.txt": "esc_[31mred~2.txt",
        "a\x07": "a_~2",  # a directory has its name
    }


def test_a_renamed_file_never_lands_under_a_files_name_or_past_the_length_cap() -> None:
    names = portable_names(["d_", "d\x07/x.txt", "y" * 1100])
    assert names == {"d_": "d_", "d\x07/x.txt": None, "y" * 1100: None}


def test_several_renames_to_one_name_are_numbered() -> None:
    names = portable_names(["r\x07.md", "r\x1b.md", "r\n.md"])
    assert sorted(name or "" for name in names.values()) == ["r_.md", "r_~2.md", "r_~3.md"]


def test_warnings_name_files_the_way_a_terminal_can_show_them() -> None:
    collected = CollectedArtifacts(
        renamed=[{"path": "a_[2J.txt", "from": "'a\\x1b[2J.txt'"}],
        skipped=[{"path": "'link\\x07'", "reason": "symlink"}],
    )
    warnings = collected.warnings()
    assert warnings == [
        "Some result files have names that links, zips or terminals cannot carry and were"
        " kept under other names: 'a\\x1b[2J.txt' as 'a_[2J.txt'",
        "Some result files were not kept: 'link\\x07' (symlink)",
    ]
    assert not any(char < " " for warning in warnings for char in warning)


def test_markdown_link_texts_keep_their_brackets() -> None:
    markdown = results_markdown([{"path": "a[1].txt", "url": "/x/a%5B1%5D.txt", "bytes": 3}])
    assert "- [a\\[1\\].txt](/x/a%5B1%5D.txt) (3 bytes)" in markdown
