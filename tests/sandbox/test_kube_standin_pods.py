"""Pods on the Kubernetes API stand-in run as real containers on the test engine.

Init containers in order, emptyDir volumes, followed logs, phases and container states,
deadlines, image pull failures, security context, limits and deletion, all through lightkube.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import anyio
import httpx
import pytest
from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import Pod

from tests.sandbox.conftest import BUSYBOX
from tests.support.kube.standin import KubeStandIn, standin_containers
from tests.support.stores import service_url

pytestmark = [pytest.mark.kube, pytest.mark.anyio]

# A bound on waiting for a state, so that a broken stand-in fails instead of hanging.
_WAIT = 120


def container(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": BUSYBOX,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", script],
        **extra,
    }


def pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> Pod:
    return cast(
        Pod,
        Pod.from_dict(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name},
                "spec": {"restartPolicy": "Never", "containers": containers, **spec},
            }
        ),
    )


async def wait_for(kube_client: AsyncClient, name: str, done: Callable[[Pod], bool]) -> Pod:
    """The Pod once ``done`` holds for it, seen through a watch."""
    with anyio.fail_after(_WAIT):
        async for _, found in kube_client.watch(Pod, fields={"metadata.name": name}):
            if done(found):
                return found
    raise AssertionError("the watch ended")


def phase_in(*phases: str) -> Callable[[Pod], bool]:
    return lambda p: p.status is not None and p.status.phase in phases


def waiting_for(reason: str) -> Callable[[Pod], bool]:
    def check(found: Pod) -> bool:
        statuses = (found.status.containerStatuses or []) if found.status else []
        waiting = statuses[0].state.waiting if statuses and statuses[0].state else None
        return waiting is not None and waiting.reason == reason

    return check


def state(found: Pod, group: str = "containerStatuses", index: int = 0) -> Any:
    assert found.status is not None
    statuses = getattr(found.status, "initContainerStatuses" if group == "init" else group)
    return statuses[index].state


async def log_of(kube_client: AsyncClient, name: str, container: str | None = None) -> str:
    return "".join([line async for line in kube_client.log(name, container=container)])


async def test_init_containers_run_in_order_and_share_volumes(kube_client: AsyncClient) -> None:
    mount = [{"name": "shared", "mountPath": "/shared"}]
    created = pod(
        "ordered",
        [container("main", "cat /shared/order; id -u", volumeMounts=mount)],
        initContainers=[
            container("first", "echo one >> /shared/order", volumeMounts=mount),
            container("second", "echo two >> /shared/order", volumeMounts=mount),
        ],
        volumes=[{"name": "shared", "emptyDir": {}}],
    )
    await kube_client.create(created)
    done = await wait_for(kube_client, "ordered", phase_in("Succeeded", "Failed"))
    assert done.status is not None and done.status.phase == "Succeeded"
    assert await log_of(kube_client, "ordered") == "one\ntwo\n0\n"
    for index in (0, 1):
        terminated = state(done, "init", index).terminated
        assert (terminated.exitCode, terminated.reason) == (0, "Completed")
    assert state(done).terminated.reason == "Completed"
    await kube_client.delete(Pod, "ordered", grace_period=0)


async def test_a_failing_init_container_fails_the_pod(
    kube: KubeStandIn, kube_client: AsyncClient, docker_host: str
) -> None:
    await kube_client.create(
        pod(
            "init-fails",
            [container("main", "echo never")],
            initContainers=[
                container("setup", "echo broken >&2; exit 3"),
                container("later", "true"),
            ],
        )
    )
    failed = await wait_for(kube_client, "init-fails", phase_in("Failed", "Succeeded"))
    assert failed.status is not None and failed.status.phase == "Failed"
    terminated = state(failed, "init", 0).terminated
    assert (terminated.exitCode, terminated.reason) == (3, "Error")
    assert state(failed, "init", 1).waiting.reason == "PodInitializing"
    assert state(failed).waiting.reason == "PodInitializing"
    assert await log_of(kube_client, "init-fails", "setup") == "broken\n"
    with pytest.raises(ApiError) as waiting:
        await log_of(kube_client, "init-fails", "main")
    assert waiting.value.status.code == 400
    assert "is waiting to start: PodInitializing" in str(waiting.value.status.message)
    names = [c["Names"][0] for c in standin_containers(docker_host, kube.instance)]
    assert len(names) == 1 and "-setup-" in names[0]  # the rest never ran
    await kube_client.delete(Pod, "init-fails", grace_period=0)


async def test_logs_follow_the_running_container(
    kube: KubeStandIn, kube_client: AsyncClient
) -> None:
    script = "echo first; while [ ! -f /shared/go ]; do sleep 0.05; done; echo second; exit 4"
    await kube_client.create(
        pod(
            "follow",
            [container("main", script, volumeMounts=[{"name": "shared", "mountPath": "/shared"}])],
            volumes=[{"name": "shared", "emptyDir": {}}],
        )
    )
    running = await wait_for(kube_client, "follow", phase_in("Running", "Failed", "Succeeded"))
    assert running.status is not None and running.status.phase == "Running"
    assert running.metadata is not None and running.metadata.uid is not None
    lines = aiter(kube_client.log("follow", follow=True))
    assert await anext(lines) == "first\n"  # before the container could end
    volume = Path(kube.kubeconfig).parent / "kube-volumes" / running.metadata.uid / "shared"
    (volume / "go").write_text("")
    assert [line async for line in lines] == ["second\n"]
    ended = await wait_for(kube_client, "follow", phase_in("Failed", "Succeeded"))
    assert ended.status is not None and ended.status.phase == "Failed"
    assert (state(ended).terminated.exitCode, state(ended).terminated.reason) == (4, "Error")
    await kube_client.delete(Pod, "follow", grace_period=0)


async def test_the_deadline_kills_the_pod(kube_client: AsyncClient) -> None:
    await kube_client.create(
        pod("deadline", [container("main", "sleep 600")], activeDeadlineSeconds=1)
    )
    failed = await wait_for(kube_client, "deadline", phase_in("Failed", "Succeeded"))
    assert failed.status is not None
    assert (failed.status.phase, failed.status.reason) == ("Failed", "DeadlineExceeded")
    assert state(failed).terminated.exitCode == 137
    await kube_client.delete(Pod, "deadline", grace_period=0)


async def test_an_image_that_cannot_be_pulled(kube_client: AsyncClient) -> None:
    image = "registry.invalid/acme/missing:v1"
    broken = container("main", "true", image=image)
    await kube_client.create(pod("unpullable", [broken]))

    seen = await wait_for(kube_client, "unpullable", waiting_for("ImagePullBackOff"))
    assert seen.status is not None and seen.status.phase == "Pending"
    assert image in str(state(seen).waiting.message)
    await kube_client.delete(Pod, "unpullable", grace_period=0)


async def test_an_image_from_the_local_registry_is_pulled(
    kube_client: AsyncClient, docker_host: str
) -> None:
    registry = service_url("JETTY_PROXY_TEST_REGISTRY", "local registry")
    repository, tag = f"{registry}/jetty-test/kube-pull", uuid.uuid4().hex[:12]
    _push_then_forget(docker_host, BUSYBOX, repository, tag)
    try:
        await kube_client.create(
            pod("pulled", [container("main", "echo pulled", image=f"{repository}:{tag}")])
        )
        done = await wait_for(kube_client, "pulled", phase_in("Succeeded", "Failed"))
        assert done.status is not None and done.status.phase == "Succeeded"
        assert await log_of(kube_client, "pulled") == "pulled\n"
        await kube_client.delete(Pod, "pulled", grace_period=0)
    finally:
        with _engine(docker_host) as engine:
            engine.delete(f"/images/{repository}:{tag}")


async def test_security_context_and_limits(
    kube: KubeStandIn, kube_client: AsyncClient, docker_host: str
) -> None:
    secured = container(
        "main",
        "id -u; id -g; touch /x 2>/dev/null && echo writable || echo read-only",
        securityContext={
            "runAsUser": 1000,
            "runAsGroup": 2000,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        resources={"limits": {"cpu": "500m", "memory": "64Mi"}},
    )
    await kube_client.create(pod("secured", [secured]))
    await wait_for(kube_client, "secured", phase_in("Succeeded", "Failed"))
    assert await log_of(kube_client, "secured") == "1000\n2000\nread-only\n"
    (found,) = standin_containers(docker_host, kube.instance)
    with _engine(docker_host) as engine:
        host = engine.get(f"/containers/{found['Id']}/json").json()["HostConfig"]
    assert (host["NanoCpus"], host["Memory"]) == (500_000_000, 64 * 1024**2)
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
    await kube_client.delete(Pod, "secured", grace_period=0)


async def test_run_as_non_root_refuses_a_root_image(kube_client: AsyncClient) -> None:
    rooted = container("main", "true", securityContext={"runAsNonRoot": True})
    await kube_client.create(pod("rooted", [rooted]))

    seen = await wait_for(kube_client, "rooted", waiting_for("CreateContainerConfigError"))
    assert "runAsNonRoot" in str(state(seen).waiting.message)
    await kube_client.delete(Pod, "rooted", grace_period=0)


async def test_out_of_memory_is_reported(kube_client: AsyncClient) -> None:
    # The shell keeps the whole substitution in memory: far past the limit.
    hog = container(
        "main",
        "a=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#a}",
        resources={"limits": {"memory": "16Mi"}},
    )
    await kube_client.create(pod("hog", [hog]))
    done = await wait_for(kube_client, "hog", phase_in("Failed", "Succeeded"))
    assert done.status is not None and done.status.phase == "Failed"
    assert state(done).terminated.reason == "OOMKilled"
    await kube_client.delete(Pod, "hog", grace_period=0)


async def test_delete_stops_and_removes_the_containers(
    kube: KubeStandIn, kube_client: AsyncClient, docker_host: str
) -> None:
    await kube_client.create(pod("doomed", [container("main", "sleep 600")]))
    await wait_for(kube_client, "doomed", phase_in("Running"))
    assert len(standin_containers(docker_host, kube.instance)) == 1
    events = kube_client.watch(Pod, fields={"metadata.name": "doomed"})
    await kube_client.delete(Pod, "doomed", grace_period=1)
    with anyio.fail_after(_WAIT):
        async for event_type, found in events:
            if event_type == "DELETED":
                break
            assert found.metadata is not None and found.metadata.deletionTimestamp is not None
    assert standin_containers(docker_host, kube.instance) == []
    with pytest.raises(ApiError) as gone:
        await kube_client.get(Pod, "doomed")
    assert gone.value.status.code == 404


def _engine(docker_host: str) -> httpx.Client:
    if docker_host.startswith("unix://"):
        transport = httpx.HTTPTransport(uds=docker_host.removeprefix("unix://"))
        return httpx.Client(transport=transport, base_url="http://docker/v1.41", timeout=120)
    return httpx.Client(base_url="http://" + docker_host.split("://", 1)[1] + "/v1.41", timeout=120)


def _push_then_forget(docker_host: str, image: str, repository: str, tag: str) -> None:
    auth = base64.urlsafe_b64encode(b"{}").decode()
    with _engine(docker_host) as engine:
        engine.post(
            f"/images/{image}/tag", params={"repo": repository, "tag": tag}
        ).raise_for_status()
        pushed = engine.post(
            f"/images/{repository}/push", params={"tag": tag}, headers={"X-Registry-Auth": auth}
        )
        pushed.raise_for_status()
        assert '"error"' not in pushed.text, pushed.text
        engine.delete(f"/images/{repository}:{tag}").raise_for_status()
