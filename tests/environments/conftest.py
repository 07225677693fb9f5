"""Fixtures for the tests that need a real Docker engine and the local registries.

``scripts/ci/registry.sh`` starts the registries and fills them. Outside CI a missing piece
skips these tests; in CI (``CI=true``) it fails them.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from proxy.environments import Environments
from proxy.environments.cache import pulled_marker
from proxy.environments.engine import ImageEngine
from proxy.settings import Settings, SnapshotSettings
from tests.support.ci import unavailable

# The offline Debian test image (scripts/ci/test-image.sh): the base of every build here.
TEST_IMAGE = "127.0.0.1:5000/jetty/testenv:bookworm"


def require(name: str) -> str:
    value = os.environ.get(name)
    if value:
        return value
    unavailable(f"{name} is not set", "scripts/ci/ starts what it names")


class Said:
    """A progress callback that keeps what it was told."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    async def __call__(self, text: str) -> None:
        self.lines.append(text)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture(scope="session")
def docker_host() -> str:
    return os.environ.get("JETTY_PROXY_DOCKER_HOST") or require("DOCKER_HOST")


@pytest.fixture(scope="session")
def registry() -> str:
    return require("JETTY_PROXY_TEST_REGISTRY")


@pytest.fixture(scope="session")
def private_registry() -> str:
    return require("JETTY_PROXY_TEST_PRIVATE_REGISTRY")


def host_ca_bundle() -> Path | None:
    """What package builds should trust: the setting if given, else what this host trusts."""
    given = os.environ.get("JETTY_PROXY_BUILD_CA_BUNDLE")
    paths = ssl.get_default_verify_paths()
    for candidate in (given, paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def ca_bundle() -> Path | None:
    return host_ca_bundle()


@pytest.fixture
def settings(tmp_path: Path, docker_host: str, ca_bundle: Path | None) -> Settings:
    return offline_settings(tmp_path / "data", docker_host, ca_bundle)


@pytest.fixture
async def environments(settings: Settings) -> AsyncIterator[Environments]:
    the_environments = Environments.from_settings(settings)
    try:
        yield the_environments
    finally:
        await the_environments.aclose()


async def forget(docker_host: str, *references: str) -> None:
    """Remove ``references`` (and their pulled markers) from the engine, if there."""
    engine = ImageEngine.from_url(docker_host)
    try:
        for reference in references:
            await engine.remove(reference)
            await engine.remove(pulled_marker(reference))
    finally:
        await engine.aclose()


def offline_settings(data_dir: Path, docker_host: str, ca_bundle: Path | None) -> Settings:
    """Settings whose python312-uv builds from the Debian test image, not Docker Hub's python."""
    return Settings(
        data_dir=data_dir,
        docker_host=docker_host,
        build_ca_bundle=ca_bundle,
        snapshots={"python312-uv": SnapshotSettings(build_args={"BASE_IMAGE": TEST_IMAGE})},
    )


def build_python312_uv(settings: Settings) -> str:
    """Build the python312-uv snapshot (the engine's build cache makes a rebuild quick)."""

    async def build() -> str:
        environments = Environments.from_settings(settings)
        try:
            snapshot = environments.catalog.get("python312-uv")
            said = Said()
            try:
                await environments.build_snapshot(snapshot, progress=said)
            except Exception:
                print(said.text)
                raise
            return snapshot.image
        finally:
            await environments.aclose()

    return anyio.run(build)


@pytest.fixture(scope="session")
def python312_uv(
    docker_host: str, ca_bundle: Path | None, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """The python312-uv snapshot, built offline on the test image."""
    data_dir = tmp_path_factory.mktemp("snapshot")
    return build_python312_uv(offline_settings(data_dir, docker_host, ca_bundle))
