"""The sandbox Pod of `proxy.sandbox.kube_objects`, run on the Kubernetes API stand-in.

With the real agents image (Claude Code from the test cache) and a scripted server playing the
proxy's three sandbox endpoints, this checks the in-Pod design end to end: the agent copied in
by the init container and runnable from its read-only volume, inputs fetched with the run
token, results and HOME sent back as a tar that keeps symlinks as symlinks, and a stop request
that kills the agent and still sends what it wrote.
"""

from __future__ import annotations

import io
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import anyio
import pytest
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Pod
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from proxy.agents import get_adapter
from proxy.agents.install import AgentCache
from proxy.environments.dockerfile import context_archive
from proxy.sandbox.base import SandboxSpec
from proxy.sandbox.kube_objects import Peer, PodRun, PodSettings, sandbox_pod
from tests.sandbox.conftest import TESTENV
from tests.support.kube.standin import KubeStandIn
from tests.support.live import serve

pytestmark = [pytest.mark.kube, pytest.mark.anyio]

TOKEN = "jr-run-token-0123456789"
PREFIX = "/jetty/sandbox/v1"


@dataclass
class Endpoints:
    """The proxy's side of the Pod's file exchange, scripted."""

    inputs: bytes
    outputs: dict[str, bytes] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    refused: int = 0

    def app(self) -> Starlette:
        def allowed(request: Request) -> bool:
            if request.headers.get("authorization") == f"Bearer {TOKEN}":
                return True
            self.refused += 1
            return False

        async def inputs(request: Request) -> Response:
            if not allowed(request):
                return PlainTextResponse("", status_code=401)
            return Response(self.inputs, media_type="application/x-tar")

        async def stop(request: Request) -> Response:
            if not allowed(request):
                return PlainTextResponse("", status_code=401)
            with anyio.move_on_after(1):
                while not self.stop.is_set():
                    await anyio.sleep(0.05)
            return PlainTextResponse("stop" if self.stop.is_set() else "")

        async def outputs(request: Request) -> Response:
            if not allowed(request):
                return PlainTextResponse("", status_code=401)
            self.outputs[request.query_params["part"]] = await request.body()
            # Answer late, as a busy server may: the Pod must not hang up before the answer.
            await anyio.sleep(0.3)
            return PlainTextResponse("kept")

        return Starlette(
            routes=[
                Route(f"{PREFIX}/inputs", inputs),
                Route(f"{PREFIX}/stop", stop),
                Route(f"{PREFIX}/outputs", outputs, methods=["POST"]),
            ]
        )

    def output_members(self, part: str) -> dict[str, tarfile.TarInfo | bytes]:
        archive = self.outputs[part]
        found: dict[str, tarfile.TarInfo | bytes] = {}
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            for member in tar.getmembers():
                extracted = tar.extractfile(member) if member.isfile() else None
                found[member.name.rstrip("/")] = extracted.read() if extracted else member
        return found


@pytest.fixture
def endpoints() -> Iterator[tuple[Endpoints, str]]:
    scripted = Endpoints(
        context_archive({"app/assets/data.csv": b"a,b\n1,2\n", "app/trajectory.json": b"{}"})
    )
    with serve(scripted.app()) as url:
        yield scripted, url


def pod_for(kube: KubeStandIn, url: str, agents_image: str, script: str, run_id: str) -> Pod:
    spec = SandboxSpec(
        run_id=run_id,
        collection="acme",
        image=TESTENV,
        argv=["/bin/sh", "-c", script],
        env={"HOME": "/tmp/jetty-home"},
        memory_bytes=512 * 1024**2,
        user="1000:1000",
    )
    settings = PodSettings(
        namespace=kube.namespace,
        agents_image=agents_image,
        relay=Peer({"app.kubernetes.io/name": "jetty-proxy"}, 8081, "jetty-proxy"),
    )
    run = PodRun(
        token=TOKEN,
        relay_url=url,
        agent="claude-code",
        agent_version=get_adapter("claude-code").binary.version,
        deadline_seconds=600,
        suffix="t1",
    )
    return cast(Pod, Pod.from_dict(sandbox_pod(spec, settings, run)))


async def watch_until(client: AsyncClient, name: str, done: Callable[[Pod], bool]) -> Pod:
    with anyio.fail_after(180):
        async for _, found in client.watch(Pod, fields={"metadata.name": name}):
            if done(found):
                return found
    raise AssertionError("the watch ended")


def finished(found: Pod) -> bool:
    return found.status is not None and found.status.phase in ("Succeeded", "Failed")


def agent_running(found: Pod) -> bool:
    statuses = found.status.containerStatuses if found.status else None
    return bool(statuses and statuses[0].state and statuses[0].state.running)


async def test_the_agent_runs_from_the_image_and_files_go_both_ways(
    kube: KubeStandIn,
    kube_client: AsyncClient,
    agents_image: str,
    endpoints: tuple[Endpoints, str],
) -> None:
    scripted, url = endpoints
    claude = (await AgentCache(Path(_cache_dir())).ensure(get_adapter("claude-code"))).command
    script = (
        "cat /app/assets/data.csv; id -u; echo to-stderr >&2; "
        "cp /app/assets/data.csv /app/results/copy.csv; "
        "ln -s /etc/passwd /app/results/passwd; "
        'echo resumable > "$HOME/session.txt"; '
        f"{claude} --version; "
        f"touch {claude} 2>/dev/null || echo tools-read-only"
    )
    created = await kube_client.create(pod_for(kube, url, agents_image, script, "0a1b2c3d"))
    assert created.metadata is not None and created.metadata.name is not None
    name = created.metadata.name
    done = await watch_until(kube_client, name, finished)
    log = "".join([line async for line in kube_client.log(name, container="agent")])
    assert done.status is not None and done.status.phase == "Succeeded", log
    assert "a,b\n1,2\n1000\n" in log
    assert "2.1.328 (Claude Code)" in log
    assert "tools-read-only" in log
    assert "to-stderr" not in log  # the log is the agent's stdout; its stderr leaves apart
    assert set(scripted.outputs) == {"results", "home", "stderr"}
    results = scripted.output_members("results")
    assert results["results/copy.csv"] == b"a,b\n1,2\n"
    link = results["results/passwd"]
    assert isinstance(link, tarfile.TarInfo) and link.issym()  # sent as a link, not followed
    assert scripted.output_members("home")["jetty-home/session.txt"] == b"resumable\n"
    assert scripted.outputs["stderr"] == b"to-stderr\n"
    assert scripted.refused == 0
    assert "did not take" not in log
    await kube_client.delete(Pod, name, grace_period=0)


async def test_a_stop_kills_the_agent_and_its_results_still_leave(
    kube: KubeStandIn,
    kube_client: AsyncClient,
    agents_image: str,
    endpoints: tuple[Endpoints, str],
) -> None:
    scripted, url = endpoints
    script = "echo partial > /app/results/partial.txt; echo started; sleep 600"
    created = await kube_client.create(pod_for(kube, url, agents_image, script, "1b2c3d4e"))
    assert created.metadata is not None and created.metadata.name is not None
    name = created.metadata.name
    await watch_until(kube_client, name, agent_running)
    with anyio.fail_after(180):
        lines = aiter(kube_client.log(name, container="agent", follow=True))
        while await anext(lines) != "started\n":
            pass
    scripted.stop.set()
    done = await watch_until(kube_client, name, finished)
    assert done.status is not None and done.status.phase == "Failed"
    statuses = done.status.containerStatuses
    assert statuses and statuses[0].state and statuses[0].state.terminated
    assert statuses[0].state.terminated.exitCode == 137
    assert scripted.output_members("results")["results/partial.txt"] == b"partial\n"
    await kube_client.delete(Pod, name, grace_period=0)


def _cache_dir() -> str:
    import os

    return os.environ["JETTY_PROXY_AGENT_CACHE_DIR"]
