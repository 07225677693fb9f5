"""The examples in README.md and docs/*.md work as written.

Python examples run against a live proxy in front of a scripted upstream (their
``http://127.0.0.1:8000`` is pointed at it), each in a fresh interpreter; an example marked
``<!-- snippet: compile-only (why) -->`` on the line before its fence needs what a test cannot
give it (a runbook file, an image) and is only compiled. Shell examples must parse
(``bash -n``) and keep every line continuation (a ``#`` comment on a line ending in ``\\``
swallows the backslash and ends the command there). TOML and YAML examples must parse.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from proxy.app import create_app
from proxy.settings import Settings
from tests.support.live import serve
from tests.support.scripted_openai import ScriptedUpstream

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(
    r"^(?:<!-- snippet: (?P<mark>[\w-]+)[^>]*-->\n)?```(?P<lang>\w*)\n(?P<code>.*?)^```",
    re.MULTILINE | re.DOTALL,
)
_QUOTED = re.compile(r"'[^']*'|\"(?:[^\"\\\\]|\\\\.)*\"")


@dataclass(frozen=True)
class Snippet:
    source: str
    line: int
    lang: str
    code: str
    mark: str | None

    def __str__(self) -> str:
        return f"{self.source}:{self.line}"


def snippets(*langs: str) -> list[Snippet]:
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            if match.group("lang") in langs:
                line = text.count("\n", 0, match.start("code"))
                found.append(
                    Snippet(
                        str(path.relative_to(ROOT)),
                        line,
                        match.group("lang"),
                        match.group("code"),
                        match.group("mark"),
                    )
                )
    return found


def test_the_docs_have_examples_of_each_kind() -> None:
    assert {s.lang for s in snippets("python", "sh", "toml", "yaml")} == {
        "python",
        "sh",
        "toml",
        "yaml",
    }


@pytest.fixture(scope="module")
def live_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    scripted = ScriptedUpstream()
    with serve(scripted.app()) as upstream:
        settings = Settings(
            data_dir=tmp_path_factory.mktemp("docs") / "data",
            upstream_url=upstream + "/v1",
            upstream_api_key="sk-upstream",
            backend="local",
        )
        with serve(create_app(settings)) as url:
            yield url


@pytest.mark.parametrize("snippet", snippets("python"), ids=str)
def test_python_examples_run(snippet: Snippet, live_proxy: str, tmp_path: Path) -> None:
    compile(snippet.code, str(snippet), "exec")
    if snippet.mark == "compile-only":
        return
    code = snippet.code.replace("http://127.0.0.1:8000", live_proxy)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"{snippet} failed:\n{done.stderr}"
    assert done.stdout.strip(), f"{snippet} printed nothing"


@pytest.mark.parametrize("snippet", snippets("sh", "bash", "shell"), ids=str)
def test_shell_examples_parse(snippet: Snippet) -> None:
    done = subprocess.run(["bash", "-n"], input=snippet.code, capture_output=True, text=True)
    assert done.returncode == 0, f"{snippet}: {done.stderr}"
    for number, line in enumerate(snippet.code.splitlines(), start=snippet.line + 1):
        if line.rstrip().endswith("\\") and " #" in _QUOTED.sub("", line):
            pytest.fail(f"{snippet.source}:{number}: a comment swallows the line continuation")


@pytest.mark.parametrize("snippet", snippets("toml"), ids=str)
def test_toml_examples_parse(snippet: Snippet) -> None:
    tomllib.loads(snippet.code)


@pytest.mark.parametrize("snippet", snippets("yaml"), ids=str)
def test_yaml_examples_parse(snippet: Snippet) -> None:
    assert yaml.safe_load(snippet.code) is not None
