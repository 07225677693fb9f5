from __future__ import annotations

from typing import Any

import pytest

from proxy.agents import agent_names
from proxy.errors import InvalidField
from proxy.jetty.schema import JettyBlock, parse_jetty_block

GIB = 1024**3
MIB = 1024**2


def rejected(raw: object) -> InvalidField:
    with pytest.raises(InvalidField) as caught:
        parse_jetty_block(raw)
    assert caught.value.status_code == 400
    return caught.value


def test_empty_block_has_defaults() -> None:
    block = parse_jetty_block({})
    assert block.runbook is False
    assert block.tool_activity == "reasoning"
    assert block.detach is False
    assert block.file_paths == [] and block.files == [] and block.template_variables == {}
    for name in ("collection", "agent", "snapshot", "image", "pip_packages", "timeout_sec"):
        assert getattr(block, name) is None
    assert block.model_fields_set == set()


def test_full_block() -> None:
    block = parse_jetty_block(
        {
            "runbook": True,
            "collection": "acme",
            "task": "nightly-report",
            "agent": "codex",
            "model_provider": "openrouter",
            "snapshot": "python312-uv",
            "image": "ghcr.io/acme/env:v1.2",
            "base_image": "python:3.12-slim",
            "pip_packages": ["numpy==1.26.4", "pandas[excel]>=2.0,<3"],
            "apt_packages": ["git", "curl=7.88.1-10+deb12u5"],
            "file_paths": ["uploads/sales.csv"],
            "files": ["file-abc123"],
            "template_variables": {"dataset": "sales.csv", "limit": 10},
            "runbook_url": "https://example.com/runbook.md",
            "timeout_sec": 600,
            "network_enabled": True,
            "cpus": 2,
            "memory": "8G",
            "max_turns": 30,
            "tool_activity": "none",
            "detach": True,
        }
    )
    assert block.agent == "codex"
    assert block.memory_bytes == 8 * GIB
    assert block.cpus == 2.0
    assert block.template_variables == {"dataset": "sales.csv", "limit": "10"}


def test_the_agents_are_those_of_the_adapter_registry() -> None:
    for name in agent_names():
        assert parse_jetty_block({"runbook": True, "agent": name}).agent == name
    with pytest.raises(InvalidField, match="unknown agent 'aider'; known: claude-code, codex"):
        parse_jetty_block({"runbook": True, "agent": "aider"})


@pytest.mark.parametrize(
    ("raw", "param", "message"),
    [
        ({"foo": 1}, "jetty.foo", "Unknown field 'jetty.foo'; known fields: runbook"),
        ({"memory_bytes": 1}, "jetty.memory_bytes", "known fields: runbook, collection"),
        ({"agent": "opencode"}, "jetty.agent", "known: claude-code, codex, gemini-cli"),
        ({"agent": 3}, "jetty.agent", "Input should be"),
        ({"model_provider": "azure"}, "jetty.model_provider", "known: anthropic, openai"),
        ({"tool_activity": "all"}, "jetty.tool_activity", "known: reasoning, content, none"),
        ({"runbook": "true"}, "jetty.runbook", "valid boolean"),
        ({"runbook": 1}, "jetty.runbook", "valid boolean"),
        ({"detach": "yes"}, "jetty.detach", "valid boolean"),
        ({"network_enabled": 1}, "jetty.network_enabled", "valid boolean"),
        ({"timeout_sec": 0}, "jetty.timeout_sec", "greater than or equal to 1"),
        ({"timeout_sec": 86_401}, "jetty.timeout_sec", "less than or equal to 86400"),
        ({"timeout_sec": "60"}, "jetty.timeout_sec", "valid integer"),
        ({"timeout_sec": 60.5}, "jetty.timeout_sec", "valid integer"),
        ({"timeout_sec": True}, "jetty.timeout_sec", "valid integer"),
        ({"cpus": 0}, "jetty.cpus", "greater than 0"),
        ({"cpus": 64.5}, "jetty.cpus", "less than or equal to 64"),
        ({"cpus": "2"}, "jetty.cpus", "valid number"),
        ({"max_turns": 0}, "jetty.max_turns", "greater than or equal to 1"),
        ({"collection": "-acme"}, "jetty.collection", "is not a valid name"),
        ({"collection": "a/b"}, "jetty.collection", "is not a valid name"),
        ({"collection": ""}, "jetty.collection", "is not a valid name"),
        ({"task": "t" * 65}, "jetty.task", "is not a valid name"),
        ({"task": "tâche"}, "jetty.task", "is not a valid name"),
        ({"snapshot": "python 3"}, "jetty.snapshot", "is not a valid name"),
        ({"image": "Ubuntu"}, "jetty.image", "must be lowercase"),
        ({"image": "acme//env"}, "jetty.image", "empty path component"),
        ({"base_image": "python:3.12 slim"}, "jetty.base_image", "cannot appear"),
        ({"files": ["file-ok", "abc"]}, "jetty.files[1]", "is not a file id"),
        ({"files": "file-abc"}, "jetty.files", "valid list"),
        ({"template_variables": []}, "jetty.template_variables", "valid dictionary"),
        ({"runbook_url": "ftp://example.com/r.md"}, "jetty.runbook_url", "http:// or https://"),
        ({"runbook_url": "file:///etc/passwd"}, "jetty.runbook_url", "http:// or https://"),
        ({"runbook_url": "http://"}, "jetty.runbook_url", "with a host"),
        ({"runbook_url": "example.com/r.md"}, "jetty.runbook_url", "http:// or https://"),
        ({"runbook_url": "https://x.io/" + "a" * 2100}, "jetty.runbook_url", "at most 2048"),
    ],
)
def test_bad_fields_name_the_field(raw: dict[str, Any], param: str, message: str) -> None:
    error = rejected(raw)
    assert error.param == param
    assert message in error.message
    assert error.body()["error"]["param"] == param


@pytest.mark.parametrize("raw", [None, [], "runbook", 1])
def test_the_block_must_be_an_object(raw: object) -> None:
    assert rejected(raw).param == "jetty"


@pytest.mark.parametrize(
    "package",
    [
        "numpy",
        "numpy==1.26.4",
        "Django~=4.2",
        "scikit-learn>=1.4",
        "zope.interface<=6",
        "pandas[excel,performance]>=2.0,<3",
        "torch==2.3.0+cpu",
        "requests!=2.30.0",
        "pkg==1.*",
        "pkg===1.0",
        "pkg==1!2.0",
        "a",
    ],
)
def test_valid_pip_packages(package: str) -> None:
    assert parse_jetty_block({"pip_packages": [package]}).pip_packages == [package]


@pytest.mark.parametrize(
    "package",
    [
        "numpy; rm -rf /",
        "$(id)",
        "`id`",
        "a b",
        "-e",
        "--index-url=https://evil.example/simple",
        "pkg @ https://evil.example/pkg.whl",
        "pkg==",
        "pkg==1.0 ",
        "pkg|cat",
        "pkg&&id",
        "pkg\n",
        "pkg>=1;python_version<'3.12'",
        "",
        "pkg-",
        "pkg[ext",
        "pkg==1.0$(id)",
    ],
)
def test_pip_injection_attempts_are_refused(package: str) -> None:
    error = rejected({"pip_packages": ["numpy", "pandas", package]})
    assert error.param == "jetty.pip_packages[2]"
    assert "is not a PyPI package name" in error.message


@pytest.mark.parametrize(
    "package", ["git", "libpq-dev", "g++", "python3.11", "curl=7.88.1-10+deb12u5", "libc6=1:2.36-9"]
)
def test_valid_apt_packages(package: str) -> None:
    assert parse_jetty_block({"apt_packages": [package]}).apt_packages == [package]


@pytest.mark.parametrize(
    "package",
    [
        "Git",
        "a",
        "git; rm -rf /",
        "$(id)",
        "a b",
        "-y",
        "--allow-unauthenticated",
        "git=",
        "curl=abc",
    ],
)
def test_apt_injection_attempts_are_refused(package: str) -> None:
    error = rejected({"apt_packages": ["git", package]})
    assert error.param == "jetty.apt_packages[1]"
    assert "is not a Debian package name" in error.message


def test_package_lists_are_capped() -> None:
    assert rejected({"pip_packages": ["numpy"] * 201}).param == "jetty.pip_packages"


@pytest.mark.parametrize("path", ["sales.csv", "uploads/2024/sales.csv", "a b/c-d_e.f", "..x/y.."])
def test_valid_file_paths(path: str) -> None:
    assert parse_jetty_block({"file_paths": [path]}).file_paths == [path]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "cannot be empty"),
        ("/etc/passwd", "is absolute"),
        ("../secrets", "'..'"),
        ("a/../../b", "'..'"),
        ("a//b", "empty or '.' path segment"),
        ("a/", "empty or '.' path segment"),
        ("./a", "empty or '.' path segment"),
        ("a\\b", "backslash"),
        ("..\\..\\windows", "backslash"),
        ("a\x00b", "NUL"),
        ("a\nb", "control characters"),
        ("a" * 1025, "at most 1024"),
    ],
)
def test_unsafe_file_paths_are_refused(path: str, message: str) -> None:
    error = rejected({"file_paths": ["ok.csv", path]})
    assert error.param == "jetty.file_paths[1]"
    assert message in error.message


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        ("512m", 512 * MIB),
        ("512M", 512 * MIB),
        ("8G", 8 * GIB),
        ("1.5g", 3 * GIB // 2),
        ("2GiB", 2 * GIB),
        ("1024mb", GIB),
        ("1 g", GIB),
        ("6m", 6 * MIB),
        ("1t", 1024 * GIB),
        (8 * GIB, 8 * GIB),
        (str(GIB), GIB),
    ],
)
def test_memory_sizes(memory: object, expected: int) -> None:
    assert parse_jetty_block({"memory": memory}).memory_bytes == expected


@pytest.mark.parametrize(
    ("memory", "message"),
    [
        ("lots", "is not a memory size"),
        ("-1g", "is not a memory size"),
        ("8 gigabytes", "is not a memory size"),
        ("9" * 400 + "t", "is not a memory size"),
        ("1e9", "is not a memory size"),
        (10**30, "between 6 MiB and 1 TiB"),
        ("5m", "between 6 MiB and 1 TiB"),
        ("2t", "between 6 MiB and 1 TiB"),
        (1024, "between 6 MiB and 1 TiB"),
        (True, "valid integer"),
        (1.5e9, "valid integer"),
    ],
)
def test_bad_memory_sizes(memory: object, message: str) -> None:
    error = rejected({"memory": memory})
    assert error.param == "jetty.memory"
    assert message in error.message


def test_template_variables_stringify_scalars() -> None:
    block = parse_jetty_block(
        {"template_variables": {"s": "x", "n": 3, "f": 0.5, "yes": True, "no": False, "_x1": ""}}
    )
    assert block.template_variables == {
        "s": "x",
        "n": "3",
        "f": "0.5",
        "yes": "true",
        "no": "false",
        "_x1": "",
    }


@pytest.mark.parametrize(
    ("variables", "param", "message"),
    [
        ({"v": None}, "jetty.template_variables.v", "must be a string, number or boolean"),
        ({"v": {"a": 1}}, "jetty.template_variables.v", "must be a string, number or boolean"),
        ({"v": [1]}, "jetty.template_variables.v", "must be a string, number or boolean"),
        ({"a b": "x"}, "jetty.template_variables.a b", "is not a valid variable name"),
        ({"1st": "x"}, "jetty.template_variables.1st", "is not a valid variable name"),
        ({"v": "x" * 70_000}, "jetty.template_variables.v", "at most 65536"),
    ],
)
def test_bad_template_variables(variables: dict[str, Any], param: str, message: str) -> None:
    error = rejected({"template_variables": variables})
    assert error.param == param
    assert message in error.message


def test_the_block_is_immutable() -> None:
    block = parse_jetty_block({"collection": "acme"})
    with pytest.raises(ValueError, match="frozen"):
        block.collection = "other"  # type: ignore[misc]
    assert isinstance(block, JettyBlock)


def test_error_messages_shorten_huge_values() -> None:
    error = rejected({"pip_packages": ["x y" * 10_000]})
    assert len(error.message) < 300
