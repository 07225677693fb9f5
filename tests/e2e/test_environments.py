"""Runs in each kind of environment, through the whole request path, on the real engine.

A snapshot, a custom image pulled from a local registry, and a package build: each run is a
real Claude Code run (the scripted model has it run one Bash command) in the environment the
request named, and the second run of the same environment neither pulls nor builds. Broken
images fail in-band with their own error code before any agent starts.

Needs, beyond the other end-to-end tests: the registries of scripts/ci/registry.sh and, for
builds, Debian's and PyPI's registries reachable from the engine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from proxy.environments.dockerfile import BuildSpec, render
from proxy.environments.engine import ImageEngine
from proxy.settings import SnapshotSettings
from tests.e2e.conftest import TEST_IMAGE, ProxyFactory, trajectory
from tests.environments.conftest import (
    build_python312_uv,
    forget,
    host_ca_bundle,
    offline_settings,
    require,
)
from tests.support.scripted_anthropic import ScriptedAnthropic

pytestmark = [pytest.mark.docker, pytest.mark.agents]

RUNBOOK = """---
version: 1
agent: claude-code
---
# Check the environment

Write what the environment has into {{results_dir}}.
"""
MESSAGES = [
    {"role": "system", "content": RUNBOOK},
    {"role": "user", "content": "Execute the runbook."},
]
OFFLINE_SNAPSHOTS = {"python312-uv": SnapshotSettings(build_args={"BASE_IMAGE": TEST_IMAGE})}
APT = ["python3-pip", "python3-yaml"]
PIP = ["six==1.16.0"]


@pytest.fixture(scope="module")
def registry() -> str:
    return require("JETTY_PROXY_TEST_REGISTRY")


@pytest.fixture(scope="module")
def private_registry() -> str:
    return require("JETTY_PROXY_TEST_PRIVATE_REGISTRY")


@pytest.fixture
def proxy_settings() -> dict[str, Any]:
    """What every proxy here runs with: offline snapshots, and the host's CA for builds."""
    return {"snapshots": OFFLINE_SNAPSHOTS, "build_ca_bundle": host_ca_bundle()}


class Run:
    """One streamed run, read to the end: its chunks, reasoning, content and closing error."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.run_id = response.headers.get("x-jetty-trajectory-id", "")
        text = response.text
        lines = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
        assert lines and lines[-1] == "[DONE]", text[-2000:]
        self.events = [json.loads(line) for line in lines[:-1]]

    def _deltas(self, key: str) -> str:
        return "".join(
            str(event["choices"][0]["delta"].get(key) or "")
            for event in self.events
            if event.get("choices")
        )

    @property
    def reasoning(self) -> str:
        return self._deltas("reasoning_content")

    @property
    def content(self) -> str:
        return self._deltas("content")

    @property
    def error(self) -> dict[str, Any] | None:
        last = self.events[-1]
        return last.get("error") if isinstance(last.get("error"), dict) else None

    @property
    def meta(self) -> dict[str, Any]:
        for event in reversed(self.events):
            if "jetty" in event:
                found: dict[str, Any] = event["jetty"]
                return found
        return {}


def _run(proxy: str, jetty: dict[str, Any]) -> Run:
    response = httpx.post(
        proxy + "/v1/chat/completions",
        json={
            "model": "claude-sonnet-4-6",
            "messages": MESSAGES,
            "stream": True,
            "jetty": {"runbook": True, "collection": "acme", "task": "env", **jetty},
        },
        timeout=600,
    )
    assert response.status_code == 200, response.text
    return Run(response)


def _artifact(proxy: str, run: Run, name: str) -> str:
    found = {a["path"]: a for a in run.meta.get("artifacts", [])}
    assert name in found, (run.meta, run.reasoning[-3000:])
    url = str(found[name]["url"])
    return httpx.get(url if url.startswith("http") else proxy + url).text


def _build_images(docker_host: str) -> set[str]:
    async def listing() -> set[str]:
        engine = ImageEngine.from_url(docker_host)
        try:
            images = await engine.images({"label": ["jetty-proxy.environment=build"]})
            return {image["Id"] for image in images}
        finally:
            await engine.aclose()

    return anyio.run(listing)


def test_a_public_image_is_pulled_with_progress_once_then_reused(
    make_proxy: ProxyFactory,
    anthropic: tuple[ScriptedAnthropic, str],
    registry: str,
    docker_host: str,
    proxy_settings: dict[str, Any],
) -> None:
    reference = f"{registry}/acme/env:v1"
    anyio.run(forget, docker_host, reference)
    anthropic[0].command = "cat /etc/acme-env-release > /app/results/release.txt"
    with make_proxy(**proxy_settings) as proxy:
        cold = _run(proxy, {"image": reference})
        assert cold.error is None, cold.error
        assert f"Image {reference} is not on the engine yet: pulling it." in cold.reasoning
        assert f"Pulling {reference}: " in cold.reasoning
        assert "layers done" in cold.reasoning and "%)" in cold.reasoning
        assert f"Pulled {reference} (" in cold.reasoning
        assert f"in {reference} (docker sandbox" in cold.reasoning
        assert _artifact(proxy, cold, "release.txt") == "acme env v1\n"

        # The second run finds the image: no pull. Packages next to an image are ignored,
        # and the stream says so.
        warm = _run(proxy, {"image": reference, "pip_packages": ["six"]})
        assert warm.error is None, warm.error
        assert "Pulling" not in warm.reasoning
        assert "warning: jetty.pip_packages was ignored" in warm.reasoning
        assert trajectory(proxy, "acme", "env", warm.run_id)["status"] == "completed"


@pytest.mark.parametrize(
    ("image", "code", "words"),
    [
        ("{registry}/acme/arm64:v1", "image_platform", "is built for linux/arm64"),
        ("{registry}/acme/nobash:v1", "image_no_bash", "has no working bash"),
        ("{private}/acme/secret:v1", "image_not_public", "the image must be public"),
        ("{registry}/acme/env:missing", "image_not_found", "no such repository or tag"),
    ],
)
def test_unusable_images_fail_in_band_before_any_agent_starts(
    make_proxy: ProxyFactory,
    anthropic: tuple[ScriptedAnthropic, str],
    registry: str,
    private_registry: str,
    docker_host: str,
    image: str,
    code: str,
    words: str,
) -> None:
    reference = image.format(registry=registry, private=private_registry)
    anyio.run(forget, docker_host, reference)
    with make_proxy() as proxy:
        run = _run(proxy, {"image": reference})
        assert run.error is not None
        assert run.error["code"] == code
        assert words in run.error["message"]
        assert reference in run.error["message"]
        record = trajectory(proxy, "acme", "env", run.run_id)
        assert record["status"] == "failed"
        assert words in record["error"]
    assert anthropic[0].calls == 0


def test_a_package_build_runs_once_is_reused_and_its_packages_import(
    make_proxy: ProxyFactory,
    anthropic: tuple[ScriptedAnthropic, str],
    docker_host: str,
    proxy_settings: dict[str, Any],
) -> None:
    ca = proxy_settings["build_ca_bundle"]
    spec = BuildSpec(TEST_IMAGE, tuple(APT), tuple(PIP))
    tag = render(spec, ca_bundle=Path(ca).read_bytes() if ca else None).tag
    anyio.run(forget, docker_host, tag)
    anthropic[0].command = (
        "python3 -c 'import six, yaml; print(six.__version__, yaml.__name__)'"
        " > /app/results/imports.txt"
    )
    build = {"base_image": TEST_IMAGE, "apt_packages": APT, "pip_packages": PIP}
    with make_proxy(**proxy_settings) as proxy:
        cold = _run(proxy, build)
        assert cold.error is None, (cold.error, cold.reasoning[-3000:])
        assert f"Building {tag} on {TEST_IMAGE}" in cold.reasoning
        assert "Step 1/" in cold.reasoning
        assert f"Built {tag}." in cold.reasoning
        assert _artifact(proxy, cold, "imports.txt") == "1.16.0 yaml\n"

        warm = _run(proxy, build)
        assert warm.error is None, warm.error
        assert f"Reusing {tag}" in warm.reasoning
        assert "Building" not in warm.reasoning
        assert _artifact(proxy, warm, "imports.txt") == "1.16.0 yaml\n"


def test_bad_package_names_are_400s_and_build_nothing(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str], docker_host: str
) -> None:
    before = _build_images(docker_host)
    with make_proxy() as proxy:
        for field, value, param in (
            ("apt_packages", ["curl", "bash;id"], "jetty.apt_packages[1]"),
            ("pip_packages", ["six --index-url http://x"], "jetty.pip_packages[0]"),
            ("pip_packages", ["$(id)"], "jetty.pip_packages[0]"),
        ):
            response = httpx.post(
                proxy + "/v1/chat/completions",
                json={
                    "model": "claude-sonnet-4-6",
                    "messages": MESSAGES,
                    "jetty": {"runbook": True, "base_image": TEST_IMAGE, field: value},
                },
            )
            assert response.status_code == 400, response.text
            assert response.json()["error"]["param"] == param
    assert _build_images(docker_host) == before
    assert anthropic[0].calls == 0


def test_a_snapshot_run_uses_the_built_snapshot_also_by_default(
    make_proxy: ProxyFactory,
    anthropic: tuple[ScriptedAnthropic, str],
    docker_host: str,
    proxy_settings: dict[str, Any],
    tmp_path: Path,
) -> None:
    image = build_python312_uv(
        offline_settings(tmp_path / "build", docker_host, proxy_settings["build_ca_bundle"])
    )
    anthropic[0].command = "{ python3 --version; uv --version; } > /app/results/versions.txt"
    with make_proxy(default_snapshot="python312-uv", **proxy_settings) as proxy:
        named = _run(proxy, {"snapshot": "python312-uv"})
        assert named.error is None, named.error
        assert f"in {image} (docker sandbox" in named.reasoning
        assert "Pulling" not in named.reasoning and "Building" not in named.reasoning
        versions = _artifact(proxy, named, "versions.txt").splitlines()
        assert versions[0].startswith("Python 3.")
        assert versions[1].startswith("uv 0.")

        unnamed = _run(proxy, {})
        assert unnamed.error is None, unnamed.error
        assert f"in {image} (docker sandbox" in unnamed.reasoning


def test_unknown_and_unbuilt_snapshots_are_refused_before_anything_starts(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str]
) -> None:
    unbuilt = {"prism-playwright": SnapshotSettings(image="jetty-env/prism-playwright:never")}
    with make_proxy(snapshots=unbuilt) as proxy:
        for snapshot, status, words in (
            ("python311", 400, "Unknown snapshot 'python311'; known: python312-uv, prism"),
            ("prism-playwright", 503, "jetty-proxy snapshots build prism-playwright"),
        ):
            response = httpx.post(
                proxy + "/v1/chat/completions",
                json={
                    "model": "claude-sonnet-4-6",
                    "messages": MESSAGES,
                    "jetty": {"runbook": True, "snapshot": snapshot},
                },
            )
            assert response.status_code == status, response.text
            error = response.json()["error"]
            assert words in error["message"]
            assert error["param"] == "jetty.snapshot"
    assert anthropic[0].calls == 0
