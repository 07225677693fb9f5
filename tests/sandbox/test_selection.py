from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from proxy.sandbox import DockerBackend, EngineUnavailable, LocalBackend, open_backend
from proxy.sandbox.dockerapi import DEFAULT_DOCKER_HOST, resolve_docker_host
from proxy.sandbox.selection import BACKENDS, opener
from proxy.settings import Settings

pytestmark = pytest.mark.anyio


def settings(tmp_path: Path, backend: str, docker_host: str | None = None) -> Settings:
    return Settings(data_dir=tmp_path, backend=backend, docker_host=docker_host)


async def test_auto_falls_back_to_local_when_no_engine_answers(tmp_path: Path) -> None:
    backend = await open_backend(settings(tmp_path, "auto", f"unix://{tmp_path}/absent.sock"))
    assert isinstance(backend, LocalBackend)
    await backend.aclose()


async def test_docker_requires_an_answering_engine(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match=r"absent\.sock"):
        await open_backend(settings(tmp_path, "docker", f"unix://{tmp_path}/absent.sock"))


async def test_local_never_touches_docker(tmp_path: Path) -> None:
    backend = await open_backend(settings(tmp_path, "local", "unix:///does/not/matter.sock"))
    assert isinstance(backend, LocalBackend)


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="unknown sandbox backend 'firecracker'"):
        settings(tmp_path, "firecracker")
    assert settings(tmp_path, "kubernetes").backend == "kubernetes"
    with pytest.raises(ValueError, match="no sandbox backend is called 'auto'"):
        opener("auto")


def test_every_registered_backend_has_an_opener() -> None:
    for name in BACKENDS:
        assert callable(opener(name))


def test_docker_host_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert resolve_docker_host(None) == DEFAULT_DOCKER_HOST
    monkeypatch.setenv("DOCKER_HOST", "unix:///env.sock")
    assert resolve_docker_host(None) == "unix:///env.sock"
    assert resolve_docker_host("tcp://127.0.0.1:2375") == "tcp://127.0.0.1:2375"


@pytest.mark.docker
async def test_auto_picks_a_live_engine(tmp_path: Path, docker_host: str) -> None:
    backend = await open_backend(settings(tmp_path, "auto", docker_host))
    assert isinstance(backend, DockerBackend)
    assert backend.capabilities.builds_images
    await backend.aclose()
