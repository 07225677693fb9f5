"""The stand-in's node: every Pod it accepts runs as real containers on a Docker engine.

What a kubelet does for a ``restartPolicy: Never`` Pod, in small:

- ``emptyDir`` volumes are fresh host directories (mode 0777, as the kubelet makes them),
  bind-mounted into the containers that mount them (``readOnly`` honoured);
- init containers run one after another, each to completion; one that fails fails the Pod
  (its later init containers and the main containers never start);
- then the main containers start together; the Pod is ``Succeeded`` when all exit 0, else
  ``Failed``. Container states are ``waiting`` / ``running`` / ``terminated`` (``exitCode``,
  ``reason`` ``Completed``, ``Error`` or ``OOMKilled``);
- ``command``/``args`` replace the image's entrypoint/cmd as Kubernetes defines; ``env``
  (plain values), ``workingDir``, ``resources.limits`` (cpu, memory: the engine's limits),
  ``securityContext`` (``runAsUser``/``runAsGroup``, ``runAsNonRoot`` checked against the
  image's user like the kubelet's ``CreateContainerConfigError``, ``readOnlyRootFilesystem``,
  ``capabilities``, ``allowPrivilegeEscalation: false`` as no-new-privileges);
- ``activeDeadlineSeconds`` from the Pod's start: its containers are killed, phase ``Failed``,
  reason ``DeadlineExceeded``;
- images: ``imagePullPolicy`` with Kubernetes' default (``Always`` for ``:latest`` or no tag);
  a pull is only attempted from the registries given (the local test registry), so anything
  else not on the engine is ``ErrImagePull`` (then ``ImagePullBackOff``) with a message
  naming the image, and the Pod stays ``Pending``, as on a real node;
- deleting a Pod stops its containers (SIGTERM, SIGKILL after the grace period) and removes
  them and its volumes.

Not emulated: Pod networking (containers share the host's network, so they reach loopback
servers; NetworkPolicies are stored, not enforced), probes, restarts, ``valueFrom`` env,
volumes other than ``emptyDir``, events.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from proxy.environments.engine import ImageEngine
from proxy.environments.errors import EnvironmentFailed
from proxy.jetty.imageref import InvalidImageRef, parse_image_ref
from proxy.sandbox.base import SandboxError
from proxy.sandbox.dockerapi import Engine
from proxy.sandbox.frames import FrameDecoder
from tests.support.kube.containers import (
    ContainerRefused,
    container_status,
    docker_config,
    image_user_of,
    qos_class,
    waiting_status,
)
from tests.support.kube.store import Obj, Store, now

logger = logging.getLogger("tests.kube.kubelet")

LABEL_STANDIN = "jetty-test.kube-standin"
LABEL_POD = "jetty-test.kube-pod-uid"


@dataclass
class _Running:
    uid: str
    volumes: Path
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    containers: dict[str, str] = field(default_factory=dict)  # name -> engine id
    done: anyio.Event = field(default_factory=anyio.Event)
    removed: anyio.Event = field(default_factory=anyio.Event)


class Kubelet:
    """Runs the Pods of `Store` on ``engine``; ``start`` it inside a task group."""

    def __init__(
        self,
        store: Store,
        engine: Engine,
        workdir: Path,
        *,
        instance: str,
        pull_registries: tuple[str, ...] = (),
    ) -> None:
        self._store = store
        self._engine = engine
        self._images = ImageEngine(engine)
        self._workdir = workdir
        self._instance = instance
        self._pull_registries = pull_registries
        self._pods: dict[tuple[str, str], _Running] = {}
        self._removing: list[_Running] = []
        self._tasks: TaskGroup | None = None

    def start(self, tasks: TaskGroup) -> None:
        self._tasks = tasks

    def admit(self, pod: Obj) -> None:
        """Run a Pod that was just created."""
        assert self._tasks is not None, "the kubelet was not started"
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        running = _Running(pod["metadata"]["uid"], self._workdir / pod["metadata"]["uid"])
        self._pods[key] = running
        self._tasks.start_soon(self._run, key, running)

    def container_id(self, namespace: str, name: str, container: str) -> str | None:
        running = self._pods.get((namespace, name))
        return running.containers.get(container) if running else None

    async def logs(
        self, container_id: str, *, follow: bool, tail: int | None, timestamps: bool
    ) -> AsyncIterator[bytes]:
        """The container's output, stdout and stderr merged in order, as the node serves it."""
        params = {"stdout": "1", "stderr": "1", "follow": "1" if follow else "0"}
        if tail is not None:
            params["tail"] = str(tail)
        if timestamps:
            params["timestamps"] = "1"
        decoder = FrameDecoder()
        async with self._engine.stream(
            "GET", f"/containers/{container_id}/logs", params=params, timeout=None
        ) as response:
            async for chunk in response.aiter_bytes():
                for _, payload in decoder.feed(chunk):
                    yield payload

    def forget_later(self, namespace: str, name: str, grace: int) -> None:
        """Delete the Pod in the background, as the node does after the API marked it."""
        assert self._tasks is not None, "the kubelet was not started"
        self._tasks.start_soon(self.delete, namespace, name, grace)

    async def delete(self, namespace: str, name: str, grace: int) -> None:
        """Stop and remove the Pod's containers, then the Pod object."""
        running = self._pods.pop((namespace, name), None)
        if running is not None:
            self._removing.append(running)
            running.scope.cancel()
            with anyio.CancelScope(shield=True):
                await running.done.wait()
                await self._remove(running, grace)
                running.removed.set()
        self._store.delete("pods", namespace, name)

    async def close(self) -> None:
        """Remove every Pod's containers, also of those whose deletion is under way."""
        for namespace, name in list(self._pods):
            await self.delete(namespace, name, 0)
        for running in self._removing:
            await running.removed.wait()

    async def _remove(self, running: _Running, grace: int) -> None:
        # By label, not only the ids noted, so that nothing the engine made for the Pod stays.
        filters = json.dumps({"label": [f"{LABEL_POD}={running.uid}"]})
        try:
            listed = await self._engine.request(
                "GET", "/containers/json", params={"all": "1", "filters": filters}
            )
            for container in listed.json():
                url = f"/containers/{container['Id']}"
                await self._engine.request(
                    "POST",
                    f"{url}/stop",
                    params={"t": str(grace)},
                    ok=(304, 404),
                    timeout=grace + 30,
                )
                await self._engine.request(
                    "DELETE", url, params={"force": "1", "v": "1"}, ok=(404, 409)
                )
        except SandboxError as exc:
            logger.warning("could not remove the containers of pod %s: %s", running.uid, exc)
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(running.volumes, ignore_errors=True))

    async def _run(self, key: tuple[str, str], running: _Running) -> None:
        try:
            with running.scope:
                await self._run_pod(key, running)
        except Exception:
            logger.exception("the stand-in kubelet failed on pod %s/%s", *key)
            self._setstatus(key, phase="Failed", reason="StandInError")
        finally:
            running.done.set()

    async def _run_pod(self, key: tuple[str, str], running: _Running) -> None:
        pod = self._store.get("pods", *key)
        if pod is None:
            return
        spec = pod["spec"]
        init = spec.get("initContainers") or []
        main = spec["containers"]
        self._setstatus(
            key,
            phase="Pending",
            startTime=now(),
            hostIP="127.0.0.1",
            podIP="127.0.0.1",
            qosClass=qos_class([*init, *main]),
            conditions=[{"type": "PodScheduled", "status": "True"}],
            initContainerStatuses=[waiting_status(c, "PodInitializing") for c in init] or None,
            containerStatuses=[waiting_status(c, "PodInitializing") for c in main],
        )
        await anyio.to_thread.run_sync(lambda: self._make_volumes(spec, running.volumes))
        deadline = spec.get("activeDeadlineSeconds")
        with anyio.move_on_after(deadline) as scope:
            await self._containers(key, running, pod)
        if scope.cancelled_caught:
            with anyio.CancelScope(shield=True):
                for container_id in running.containers.values():
                    await self._engine.request(
                        "POST", f"/containers/{container_id}/kill", ok=(404, 409)
                    )
                await self._settle_killed(key, running)
            self._setstatus(
                key,
                phase="Failed",
                reason="DeadlineExceeded",
                message="Pod was active on the node longer than the specified deadline",
            )

    async def _containers(self, key: tuple[str, str], running: _Running, pod: Obj) -> None:
        spec = pod["spec"]
        for index, container in enumerate(spec.get("initContainers") or []):
            code = await self._start(key, running, pod, container, ("initContainerStatuses", index))
            if code is None:
                return
            if await self._finish(key, running, container, ("initContainerStatuses", index)):
                self._setstatus(key, phase="Failed")
                return
        self._setstatus(
            key,
            containerStatuses=[waiting_status(c, "ContainerCreating") for c in spec["containers"]],
        )
        started = []
        for index, container in enumerate(spec["containers"]):
            if await self._start(key, running, pod, container, ("containerStatuses", index)):
                started.append((index, container))
        if len(started) < len(spec["containers"]):
            await anyio.sleep_forever()  # Pending, like a node that cannot start a container
        self._setstatus(
            key,
            phase="Running",
            conditions=[
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True"},
            ],
        )
        failed = []

        async def finish(index: int, container: dict[str, Any]) -> None:
            failed.append(await self._finish(key, running, container, ("containerStatuses", index)))

        async with anyio.create_task_group() as group:
            for index, container in started:
                group.start_soon(finish, index, container)
        self._setstatus(
            key,
            phase="Failed" if any(failed) else "Succeeded",
            conditions=[
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "False", "reason": "PodCompleted"},
            ],
        )

    async def _start(
        self,
        key: tuple[str, str],
        running: _Running,
        pod: Obj,
        container: dict[str, Any],
        where: tuple[str, int],
    ) -> str | None:
        """Create and start one container; its engine id, or None when it cannot start."""
        try:
            image, image_user = await self._ensure_image(container)
            labels = {LABEL_STANDIN: self._instance, LABEL_POD: running.uid}
            body = docker_config(pod, container, running.volumes, image, image_user, labels)
        except ContainerRefused as refused:
            self._set_container(
                key, where, waiting_status(container, refused.reason, refused.message)
            )
            if refused.reason == "ErrImagePull":
                await anyio.sleep(1)
                message = f'Back-off pulling image "{container["image"]}"'
                self._set_container(
                    key, where, waiting_status(container, "ImagePullBackOff", message)
                )
            await anyio.sleep_forever()
            return None
        name = f"k8s-{pod['metadata']['name']}-{container['name']}-{running.uid[:8]}"
        # Shielded: a create cancelled in flight still makes a container, after any listing.
        with anyio.CancelScope(shield=True):
            created = await self._engine.request(
                "POST", "/containers/create", params={"name": name}, json=body
            )
        container_id: str = created.json()["Id"]
        running.containers[container["name"]] = container_id
        await self._engine.request("POST", f"/containers/{container_id}/start")
        self._set_container(
            key,
            where,
            {
                **container_status(container, container_id, image),
                "started": True,
                "state": {"running": {"startedAt": now()}},
            },
        )
        return container_id

    async def _finish(
        self,
        key: tuple[str, str],
        running: _Running,
        container: dict[str, Any],
        where: tuple[str, int],
    ) -> bool:
        """Wait for a container to exit and record it; True when it failed."""
        container_id = running.containers[container["name"]]
        await self._engine.request(
            "POST",
            f"/containers/{container_id}/wait",
            params={"condition": "not-running"},
            timeout=None,
        )
        return await self._record_exit(key, container, container_id, where)

    async def _record_exit(
        self,
        key: tuple[str, str],
        container: dict[str, Any],
        container_id: str,
        where: tuple[str, int],
    ) -> bool:
        state = (await self._engine.request("GET", f"/containers/{container_id}/json")).json()
        exit_code = int(state["State"].get("ExitCode", -1))
        reason = (
            "OOMKilled"
            if state["State"].get("OOMKilled")
            else ("Completed" if exit_code == 0 else "Error")
        )
        self._set_container(
            key,
            where,
            {
                **container_status(container, container_id, state.get("Image", "")),
                "started": False,
                "state": {
                    "terminated": {
                        "exitCode": exit_code,
                        "reason": reason,
                        "startedAt": state["State"].get("StartedAt", "")[:19] + "Z",
                        "finishedAt": state["State"].get("FinishedAt", "")[:19] + "Z",
                        "containerID": f"docker://{container_id}",
                    }
                },
            },
        )
        return exit_code != 0

    async def _settle_killed(self, key: tuple[str, str], running: _Running) -> None:
        pod = self._store.get("pods", *key)
        if pod is None:
            return
        for group in ("initContainers", "containers"):
            status_key = (
                "initContainerStatuses" if group == "initContainers" else "containerStatuses"
            )
            for index, container in enumerate(pod["spec"].get(group) or []):
                container_id = running.containers.get(container["name"])
                if container_id is not None:
                    await self._engine.request(
                        "POST",
                        f"/containers/{container_id}/wait",
                        params={"condition": "not-running"},
                        timeout=60,
                    )
                    await self._record_exit(key, container, container_id, (status_key, index))

    async def _ensure_image(self, container: dict[str, Any]) -> tuple[str, str]:
        """The image, present on the engine (pulled when allowed), and its configured user."""
        image = str(container["image"])
        try:
            ref = parse_image_ref(image)
        except InvalidImageRef as exc:
            raise ContainerRefused(
                "InvalidImageName", f'Failed to apply default image tag "{image}": {exc}'
            ) from exc
        policy = container.get("imagePullPolicy") or (
            "Always" if ref.digest is None and ref.tag in (None, "latest") else "IfNotPresent"
        )
        info = await self._engine.inspect_image(image)
        if policy == "Never" or (info is not None and policy == "IfNotPresent"):
            if info is None:
                raise ContainerRefused(
                    "ErrImageNeverPull",
                    f'Container image "{image}" is not present with pull policy of Never',
                )
            return image, image_user_of(info)
        if ref.registry not in self._pull_registries:
            raise ContainerRefused(
                "ErrImagePull",
                f'failed to pull image "{image}": the registry of this image cannot be reached'
                " from this node",
            )

        async def ignore(_: str) -> None:
            return None

        try:
            await self._images.pull(image, ignore)
        except (EnvironmentFailed, SandboxError) as exc:
            raise ContainerRefused(
                "ErrImagePull", f'failed to pull image "{image}": {exc}'
            ) from exc
        return image, image_user_of(await self._engine.inspect_image(image) or {})

    def _make_volumes(self, spec: dict[str, Any], directory: Path) -> None:
        for volume in spec.get("volumes") or []:
            path = directory / volume["name"]
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o777)

    def _setstatus(self, key: tuple[str, str], **changes: Any) -> None:
        pod = self._store.get("pods", *key)
        if pod is None:
            return
        status = pod.setdefault("status", {})
        for name, value in changes.items():
            if value is None:
                status.pop(name, None)
            else:
                status[name] = value
        self._store.update("pods", pod)

    def _set_container(self, key: tuple[str, str], where: tuple[str, int], value: Obj) -> None:
        pod = self._store.get("pods", *key)
        if pod is None:
            return
        group, index = where
        pod.setdefault("status", {}).setdefault(group, [])[index] = value
        self._store.update("pods", pod)
