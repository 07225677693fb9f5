"""``jetty-proxy snapshots …`` and ``jetty-proxy images …`` against a real engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.cli import main
from tests.environments.conftest import TEST_IMAGE

pytestmark = pytest.mark.docker


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch, docker_host: str, ca_bundle: Path | None, tmp_path: Path
) -> Path:
    monkeypatch.setenv("JETTY_PROXY_DOCKER_HOST", docker_host)
    monkeypatch.setenv("JETTY_PROXY_DATA_DIR", str(tmp_path / "data"))
    if ca_bundle is not None:
        monkeypatch.setenv("JETTY_PROXY_BUILD_CA_BUNDLE", str(ca_bundle))
    return tmp_path


def test_snapshots_build_works_offline_from_a_debian_root_then_list_shows_it(
    cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The test image is a Debian root made with debootstrap: no image registry involved.
    code = main(["snapshots", "build", "python312-uv", "--build-arg", f"BASE_IMAGE={TEST_IMAGE}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert "Successfully tagged jetty-env/python312-uv:latest" in captured.err
    assert "python312-uv: built in" in captured.err

    assert main(["snapshots", "list"]) == 0
    listing = capsys.readouterr()
    rows = {line.split()[0]: line.split() for line in listing.out.splitlines()[1:]}
    assert rows["python312-uv"][1:3] == ["*", "yes"]
    assert "jetty-env/python312-uv:latest" in rows["python312-uv"]
    assert "the default" in listing.err


def test_snapshots_build_refuses_unknown_names_and_bad_build_args(
    cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["snapshots", "build", "nope"]) == 1
    assert (
        "Unknown snapshot 'nope'; known: python312-uv, prism-playwright" in capsys.readouterr().err
    )
    assert main(["snapshots", "build", "python312-uv", "--build-arg", "NOVALUE"]) == 2


def test_a_snapshot_without_a_dockerfile_cannot_be_built(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JETTY_PROXY_SNAPSHOTS", json.dumps({"ds": {"image": "acme/ds:v3"}}))
    assert main(["snapshots", "build", "ds"]) == 1
    assert "has no Dockerfile to build" in capsys.readouterr().err


def test_images_list_and_prune(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["images", "list"]) == 0
    assert "cached images" in capsys.readouterr().err
    assert main(["images", "prune", "--max-bytes", "0"]) == 0
    assert "Removed" in capsys.readouterr().err
    assert main(["images", "list"]) == 0
    listed = capsys.readouterr()
    assert listed.out.splitlines()[1:] == []
    assert main(["images", "prune", "--max-bytes", "-1"]) == 2
