"""Environments resolved on a real engine, against real local registries.

What each test needs: a Docker engine (JETTY_PROXY_DOCKER_HOST), the registries that
scripts/ci/registry.sh starts (JETTY_PROXY_TEST_REGISTRY, JETTY_PROXY_TEST_PRIVATE_REGISTRY)
and, for builds, Debian's and PyPI's registries reachable from the engine.
"""

from __future__ import annotations

import socket
import uuid
from contextlib import aclosing
from pathlib import Path

import pytest

from proxy.environments import (
    BuildFailed,
    Environments,
    ImageNotFound,
    ImageNotPublic,
    NoBash,
    RegistryUnreachable,
    SnapshotNotBuilt,
    WrongPlatform,
)
from proxy.environments.cache import LABEL_ENVIRONMENT, pulled_marker
from proxy.errors import InvalidField
from proxy.jetty.plan import Environment
from proxy.sandbox import DockerBackend, SandboxSpec
from proxy.settings import Settings, SnapshotSettings
from tests.environments.conftest import TEST_IMAGE, Said, forget

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

BUILD = Environment(
    "build",
    None,
    TEST_IMAGE,
    pip_packages=("six==1.16.0",),
    apt_packages=("python3-pip", "python3-yaml"),
)


async def _run(docker_host: str, image: str, *argv: str) -> list[str]:
    """Run ``argv`` in ``image`` through the Docker backend; return its stdout lines."""
    backend = DockerBackend.from_url(docker_host)
    sandbox = await backend.launch(
        SandboxSpec(run_id=f"env-{uuid.uuid4().hex[:8]}", collection="test", image=image, argv=argv)
    )
    try:
        await sandbox.start()
        async with aclosing(sandbox.stdout_lines()) as lines:
            output = [line async for line in lines]
        status = await sandbox.wait(timeout=60)
        assert status.exit_code == 0, sandbox.stderr_tail()
        return output
    finally:
        await sandbox.close()
        await backend.aclose()


async def test_a_public_image_is_pulled_once_with_progress_then_reused(
    environments: Environments, registry: str, docker_host: str
) -> None:
    reference = f"{registry}/acme/env:v1"
    await forget(docker_host, reference)
    said = Said()
    cold = await environments.resolve(Environment("image", reference), progress=said)
    assert (cold.kind, cold.pulled, cold.built, cold.reference) == ("image", True, False, reference)
    assert cold.digest is not None and cold.digest.startswith(f"{registry}/acme/env@sha256:")
    assert said.lines[0] == f"Image {reference} is not on the engine yet: pulling it."
    assert any("layers done" in line and "%" in line and " MB of " in line for line in said.lines)
    assert said.lines[-1].startswith(f"Pulled {reference} (")
    info = await environments.engine.inspect(reference)
    assert info is not None and pulled_marker(reference) in info["RepoTags"]

    again = Said()
    warm = await environments.resolve(Environment("image", reference), progress=again)
    assert (warm.pulled, warm.image_id) == (False, cold.image_id)
    assert again.lines == []


@pytest.mark.parametrize(
    ("repository", "error", "words"),
    [
        ("acme/arm64:v1", WrongPlatform, "built for linux/arm64/v8; runs need a linux/amd64 image"),
        ("acme/nobash:v1", NoBash, "has no working bash"),
        ("acme/env:missing", ImageNotFound, "no such repository or tag"),
        ("acme/never-pushed:v1", ImageNotFound, "no such repository or tag"),
    ],
)
async def test_unusable_public_images_fail_fast_and_are_not_kept(
    environments: Environments,
    registry: str,
    docker_host: str,
    repository: str,
    error: type[Exception],
    words: str,
) -> None:
    reference = f"{registry}/{repository}"
    await forget(docker_host, reference)
    with pytest.raises(error) as caught:
        await environments.resolve(Environment("image", reference), progress=Said())
    assert reference in str(caught.value)
    assert words in str(caught.value)
    assert await environments.engine.inspect(reference) is None
    assert await environments.engine.inspect(pulled_marker(reference)) is None


async def test_a_private_registry_is_refused_as_not_public(
    environments: Environments, private_registry: str
) -> None:
    reference = f"{private_registry}/acme/secret:v1"
    with pytest.raises(ImageNotPublic) as caught:
        await environments.resolve(Environment("image", reference), progress=Said())
    assert "must be public" in caught.value.message
    assert caught.value.code == "image_not_public"


async def test_an_unreachable_registry_says_so(environments: Environments) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RegistryUnreachable):
        await environments.resolve(
            Environment("image", f"127.0.0.1:{port}/acme/env:v1"), progress=Said()
        )


async def test_a_package_build_is_made_once_reused_and_its_packages_import(
    environments: Environments, docker_host: str
) -> None:
    tag = (await environments.check(BUILD)).reference
    assert tag.startswith("jetty-env/build:")
    await forget(docker_host, tag)
    said = Said()
    cold = await environments.resolve(BUILD, progress=said)
    assert (cold.kind, cold.built, cold.reference) == ("build", True, tag)
    assert said.lines[0] == (
        f"Building {tag} on {TEST_IMAGE} (apt: python3-pip python3-yaml; pip: six==1.16.0)."
    )
    assert "Step 1/" in said.text
    assert "Successfully installed six-1.16.0" in said.text
    assert said.lines[-1] == f"Built {tag}."
    info = await environments.engine.inspect(tag)
    assert info is not None and info["Config"]["Labels"][LABEL_ENVIRONMENT] == "build"

    again = Said()
    warm = await environments.resolve(BUILD, progress=again)
    assert (warm.built, warm.image_id) == (False, cold.image_id)
    assert again.lines == [f"Reusing {tag}: built before from the same base and packages."]

    output = await _run(
        docker_host, tag, "python3", "-c", "import six, yaml; print(six.__version__, yaml.__name__)"
    )
    assert output == ["1.16.0 yaml"]


async def test_bad_package_names_build_nothing(environments: Environments) -> None:
    before = await environments.engine.images({"label": [f"{LABEL_ENVIRONMENT}=build"]})
    bad = Environment("build", None, TEST_IMAGE, apt_packages=("curl", "bash;rm -rf /"))
    with pytest.raises(InvalidField) as caught:
        await environments.check(bad)
    assert caught.value.param == "jetty.apt_packages[1]"
    with pytest.raises(InvalidField):
        await environments.resolve(bad, progress=Said())
    after = await environments.engine.images({"label": [f"{LABEL_ENVIRONMENT}=build"]})
    assert [i["Id"] for i in after] == [i["Id"] for i in before]


async def test_a_failed_build_is_a_clear_error_with_the_log_tail(
    environments: Environments, docker_host: str
) -> None:
    missing = Environment("build", None, TEST_IMAGE, apt_packages=("jetty-no-such-package",))
    tag = (await environments.check(missing)).reference
    await forget(docker_host, tag)
    with pytest.raises(BuildFailed) as caught:
        await environments.resolve(missing, progress=Said())
    assert "Unable to locate package jetty-no-such-package" in caught.value.log_tail
    assert caught.value.message.startswith(f"The build of {tag} failed")
    assert await environments.engine.inspect(tag) is None


async def test_a_build_on_a_base_without_bash_fails_before_building(
    environments: Environments, registry: str
) -> None:
    nobash = Environment("build", None, "jetty-test/busybox:latest", pip_packages=("six",))
    with pytest.raises(NoBash):
        await environments.resolve(nobash, progress=Said())


async def test_the_bash_verdict_is_cached_per_image(
    environments: Environments, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks: list[str] = []
    original = environments.engine.runs_bash

    async def counting(image: str) -> bool:
        checks.append(image)
        return await original(image)

    monkeypatch.setattr(environments.engine, "runs_bash", counting)
    for _ in range(3):
        resolved = await environments.resolve(Environment("image", TEST_IMAGE), progress=Said())
        assert not resolved.pulled
    assert len(checks) == 1


async def test_a_snapshot_is_used_as_built(
    environments: Environments,
    python312_uv: str,
    docker_host: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_check(image: str) -> bool:
        raise AssertionError("a snapshot built here is checked for bash when it is built")

    monkeypatch.setattr(environments.engine, "runs_bash", no_check)
    said = Said()
    checked = await environments.check(Environment("snapshot", "python312-uv"))
    assert checked.reference == python312_uv
    resolved = await environments.resolve(Environment("snapshot", "python312-uv"), progress=said)
    assert (resolved.kind, resolved.reference, resolved.pulled, resolved.built) == (
        "snapshot",
        python312_uv,
        False,
        False,
    )
    assert said.lines == []
    default = await environments.resolve(Environment("default"), progress=said)
    assert default.image_id == resolved.image_id
    output = await _run(docker_host, python312_uv, "bash", "-c", "python3 --version; uv --version")
    assert output[0].startswith("Python 3.")
    assert output[1].startswith("uv 0.")


async def test_an_unbuilt_snapshot_says_how_to_build_it(tmp_path: Path, docker_host: str) -> None:
    settings = Settings(
        data_dir=tmp_path,
        docker_host=docker_host,
        snapshots={"prism-playwright": SnapshotSettings(image="jetty-env/prism-playwright:never")},
    )
    environments = Environments.from_settings(settings)
    try:
        unbuilt = Environment("snapshot", "prism-playwright")
        with pytest.raises(SnapshotNotBuilt) as caught:
            await environments.check(unbuilt)
        assert "jetty-proxy snapshots build prism-playwright" in caught.value.message
        with pytest.raises(SnapshotNotBuilt):
            await environments.resolve(unbuilt, progress=Said())
    finally:
        await environments.aclose()


async def test_a_snapshot_built_without_bash_is_refused_and_removed(
    tmp_path: Path, docker_host: str
) -> None:
    dockerfile = tmp_path / "nobash" / "Dockerfile"
    dockerfile.parent.mkdir()
    dockerfile.write_text('FROM jetty-test/busybox:latest\nCMD ["sh"]\n')
    image = f"jetty-env/test-nobash:{uuid.uuid4().hex[:8]}"
    settings = Settings(
        data_dir=tmp_path / "data",
        docker_host=docker_host,
        snapshots={"nobash": SnapshotSettings(image=image, dockerfile=dockerfile)},
    )
    environments = Environments.from_settings(settings)
    try:
        with pytest.raises(NoBash) as caught:
            await environments.build_snapshot(environments.catalog.get("nobash"), progress=Said())
        assert "without a working bash" in caught.value.message
        assert await environments.engine.inspect(image) is None
    finally:
        await environments.aclose()
