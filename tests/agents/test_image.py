"""The agents image: its layout and tag (pure), a real build on the engine and a push."""

from __future__ import annotations

import dataclasses
import io
import tarfile
import uuid
from pathlib import Path

import anyio
import httpx
import pytest

from proxy.agents import agent_names, get_adapter
from proxy.agents.image import AgentsImage, pinned_agents_image
from proxy.agents.layout import NODE_VERSION, InstalledAgent
from proxy.cli import main
from proxy.environments.engine import ImageEngine
from tests.sandbox.conftest import configured_docker_host, engine_client
from tests.support.ci import unavailable
from tests.support.stores import service_url


def installed(tmp_path: Path, name: str, version: str) -> InstalledAgent:
    directory = tmp_path / f"{name}-{version}"
    (directory / "node_modules" / ".bin").mkdir(parents=True)
    (directory / "node_modules" / "cli.js").write_text("#!/usr/bin/env node\n")
    (directory / "node_modules" / ".bin" / "cli").symlink_to("../cli.js")
    return InstalledAgent(
        name=name,
        package=f"@acme/{name}",
        version=version,
        node_version=None,
        host_dir=directory,
        mount_point=f"/opt/jetty/agents/{name}",
        entry="node_modules/cli.js",
        node=None,
        loader=None,
        size_bytes=20,
    )


@pytest.fixture
def image(tmp_path: Path) -> AgentsImage:
    forwarder = tmp_path / "forwarder"
    forwarder.write_bytes(b"\x7fELF")
    forwarder.chmod(0o700)
    agents = [
        installed(tmp_path, "claude-code", "2.1.328"),
        installed(tmp_path, "codex", "0.169.0"),
    ]
    return AgentsImage(agents, forwarder, base="jetty-test/busybox:latest")


def test_the_default_tag_names_the_pinned_versions(image: AgentsImage) -> None:
    tag = image.default_tag()
    assert tag.startswith("jetty-proxy-agents:claude-code-2.1.328-codex-0.169.0-")
    assert len(tag.rpartition("-")[2]) == 8
    assert image.default_tag("127.0.0.1:5000/acme/agents").startswith("127.0.0.1:5000/acme/agents:")
    other_base = AgentsImage(image.agents, image.forwarder, base="busybox:1.36")
    assert other_base.default_tag() != tag  # same versions, different content


def test_the_pinned_tag_is_the_default_tag_of_every_pinned_agent(tmp_path: Path) -> None:
    """What a Kubernetes proxy uses without agents_image, knowing no install."""
    agents = []
    for name in agent_names():
        binary = get_adapter(name).binary
        agent = installed(tmp_path, name, binary.version)
        node = NODE_VERSION if binary.requires_node else None
        agents.append(dataclasses.replace(agent, node_version=node))
    built = AgentsImage(agents, tmp_path / "forwarder")
    assert pinned_agents_image() == built.default_tag()
    assert pinned_agents_image("r.example/a", "b:1") == dataclasses.replace(
        built, base="b:1"
    ).default_tag("r.example/a")


def test_the_dockerfile_lays_out_the_paths_the_pod_expects(image: AgentsImage) -> None:
    dockerfile = image.dockerfile()
    assert "FROM scratch" in dockerfile
    assert "COPY --from=base /bin/busybox /jetty/tools/busybox" in dockerfile
    assert "COPY tools/forwarder /jetty/tools/forwarder" in dockerfile
    assert "COPY agents/codex /jetty/agents/codex" in dockerfile
    assert "USER 65534:65534" in dockerfile
    assert image.labels() == {
        "jetty-proxy.agents": '{"claude-code": "2.1.328", "codex": "0.169.0"}'
    }


def test_the_context_keeps_symlinks_and_is_readable_by_all(image: AgentsImage) -> None:
    buffer = io.BytesIO()
    image.write_context(buffer)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer) as tar:
        members = {member.name: member for member in tar.getmembers()}
        assert tar.getmembers()[0].name == "Dockerfile"
        link = members["agents/codex/node_modules/.bin/cli"]
        assert link.issym() and link.linkname == "../cli.js"
        forwarder = members["tools/forwarder"]
        assert forwarder.mode & 0o555 == 0o555 and forwarder.uid == 0


def test_the_command_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agents", "image", "no-such-agent"]) == 2
    assert "no-such-agent" in capsys.readouterr().err
    assert main(["agents", "image", "--tag", "Not A Reference"]) == 2


@pytest.mark.docker
def test_build_and_push_to_a_registry(agents_image: str) -> None:
    registry = service_url("JETTY_PROXY_TEST_REGISTRY", "local registry")
    host = configured_docker_host()
    if host is None:
        unavailable("no Docker engine", "start one with scripts/ci/docker-engine.sh")
    with engine_client(host) as engine:
        info = engine.get(f"/images/{agents_image}/json").json()
    assert info["Config"]["User"] == "65534:65534"
    assert info["Config"]["Entrypoint"] == ["/jetty/tools/busybox"]
    assert '"claude-code"' in info["Config"]["Labels"]["jetty-proxy.agents"]

    repository, tag = f"{registry}/jetty-test/agents-push", uuid.uuid4().hex[:12]
    reference = f"{repository}:{tag}"
    lines: list[str] = []

    async def push() -> str | None:
        images = ImageEngine.from_url(host)
        try:
            await images.engine.tag_image(agents_image, repository, tag)

            async def keep(line: str) -> None:
                lines.append(line)

            return await images.push(reference, keep)
        finally:
            await images.aclose()

    try:
        digest = anyio.run(push)
        manifest = httpx.head(
            f"http://{registry}/v2/jetty-test/agents-push/manifests/{tag}",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
            timeout=30,
        )
        assert manifest.status_code == 200
        assert digest is not None and manifest.headers["docker-content-digest"] == digest
    finally:
        with engine_client(host) as engine:
            engine.delete(f"/images/{reference}")


@pytest.mark.docker
def test_a_push_the_registry_refuses_is_a_clear_error() -> None:
    private = service_url("JETTY_PROXY_TEST_PRIVATE_REGISTRY", "refusing registry")
    host = configured_docker_host()
    if host is None:
        unavailable("no Docker engine", "start one with scripts/ci/docker-engine.sh")
    reference = f"{private}/jetty-test/refused:{uuid.uuid4().hex[:8]}"

    async def push() -> None:
        images = ImageEngine.from_url(host)
        try:
            await images.engine.tag_image("jetty-test/busybox:latest", *reference.rsplit(":", 1))

            async def ignore(_: str) -> None:
                return None

            await images.push(reference, ignore)
        finally:
            await images.aclose()

    from proxy.environments import EnvironmentFailed

    try:
        with pytest.raises(EnvironmentFailed) as refused:
            anyio.run(push)
        assert refused.value.code == "image_push_failed"
        assert reference in refused.value.message
    finally:
        with engine_client(host) as engine:
            engine.delete(f"/images/{reference}")
