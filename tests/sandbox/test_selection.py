from __future__ import annotations

from pathlib import Path

import pytest

from proxy.sandbox import DockerBackend, EngineUnavailable, LocalBackend, select_backend
from proxy.sandbox.selection import DEFAULT_DOCKER_HOST, resolve_docker_host

pytestmark = pytest.mark.anyio


async def test_auto_falls_back_to_local_when_no_engine_answers(tmp_path: Path) -> None:
    backend = await select_backend("auto", f"unix://{tmp_path}/absent.sock")
    assert isinstance(backend, LocalBackend)
    await backend.aclose()


async def test_docker_requires_an_answering_engine(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match=r"absent\.sock"):
        await select_backend("docker", f"unix://{tmp_path}/absent.sock")


async def test_local_never_touches_docker() -> None:
    backend = await select_backend("local", "unix:///does/not/matter.sock")
    assert isinstance(backend, LocalBackend)


async def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown sandbox backend"):
        await select_backend("kubernetes", None)  # type: ignore[arg-type]


def test_docker_host_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert resolve_docker_host(None) == DEFAULT_DOCKER_HOST
    monkeypatch.setenv("DOCKER_HOST", "unix:///env.sock")
    assert resolve_docker_host(None) == "unix:///env.sock"
    assert resolve_docker_host("tcp://127.0.0.1:2375") == "tcp://127.0.0.1:2375"


@pytest.mark.docker
async def test_auto_picks_a_live_engine(docker_host: str) -> None:
    backend = await select_backend("auto", docker_host)
    assert isinstance(backend, DockerBackend)
    await backend.aclose()
