"""Imports flow one way: api → runs → (sandbox, agents, relay, store, environments, jetty)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROXY = Path(__file__).resolve().parents[1] / "proxy"
# Below runs: none of them may import runs or the HTTP edge.
LOWER = ("sandbox", "agents", "relay", "store", "environments", "jetty", "quota")


def imported(package: str) -> dict[str, set[str]]:
    """Every ``proxy.*`` module each module of ``proxy/<package>`` imports (also for types)."""
    found: dict[str, set[str]] = {}
    for path in sorted((PROXY / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[str(path.relative_to(PROXY))] = {n for n in names if n.startswith("proxy.")}
    return found


def test_the_http_edge_knows_no_agents_and_no_sandboxes() -> None:
    reaching = {
        module: sorted(n for n in names if n.startswith(("proxy.agents", "proxy.sandbox")))
        for module, names in imported("api").items()
    }
    assert {module: names for module, names in reaching.items() if names} == {}


@pytest.mark.parametrize("package", LOWER)
def test_nothing_below_runs_imports_upward(package: str) -> None:
    upward = {
        module: sorted(n for n in names if n.startswith(("proxy.runs", "proxy.api", "proxy.app")))
        for module, names in imported(package).items()
    }
    assert {module: names for module, names in upward.items() if names} == {}


def test_runs_never_import_the_http_edge() -> None:
    upward = {
        module: sorted(n for n in names if n.startswith(("proxy.api", "proxy.app")))
        for module, names in imported("runs").items()
    }
    assert {module: names for module, names in upward.items() if names} == {}
