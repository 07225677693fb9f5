"""Kubernetes backend (draft): one Pod per sandbox, over the Kubernetes API with lightkube.

A draft against today's `SandboxBackend` protocol, not yet selectable: the run path still
hands every backend host mounts (the relay's unix socket among them) that a Pod cannot have.
With the capability-based seam the run path will ask for a TCP relay and no host mounts, pass
the agent and the deadline explicitly, and know that a Pod cannot `rerun`. What this module
does today::

    launch     builds the Pod and its NetworkPolicy (`kube_objects`), nothing sent yet;
               mounts under /opt/jetty are dropped (the agents image brings them)
    put_files  files under /app or HOME, kept for the Pod's inputs
    start      the inputs go to the exchange (`kube_exchange`), then the NetworkPolicy and
               the Pod are created
    stdout     the agent container's log, followed, once it runs; an image the node cannot
               pull fails at once with `ImageNotFound`
    wait       the Pod's end (timeout: the exchange tells the Pod to stop, the agent is
               killed and its outputs still arrive), then the outputs
    copy_out   /app/results or HOME, from the archives the Pod sent, with Docker's rules
    close      the Pod (grace 2 s) and its NetworkPolicy are deleted

lightkube is the ``kubernetes`` extra: this module imports it, so import the module only
when the backend is chosen.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import secrets
import tarfile
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from pathlib import Path, PurePosixPath
from typing import Any, cast

import anyio
import anyio.to_thread
import httpx2
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.resources.authorization_v1 import SelfSubjectAccessReview
from lightkube.resources.core_v1 import Pod
from lightkube.resources.networking_v1 import NetworkPolicy

from proxy.sandbox.base import (
    LABEL_MANAGED,
    LABEL_OWNER,
    LABEL_RUN_ID,
    LABEL_SERVER,
    CopyReport,
    EngineUnavailable,
    ExitStatus,
    ImageNotFound,
    Orphans,
    SandboxError,
    SandboxLimitError,
    SandboxSpec,
    SandboxStateError,
)
from proxy.sandbox.files import ArchiveExtractor, CopyBudget, clean_absolute_dir
from proxy.sandbox.files import clean_relative_path as _clean
from proxy.sandbox.frames import TailBuffer
from proxy.sandbox.kube_exchange import Exchange, SandboxExchange
from proxy.sandbox.kube_objects import (
    AGENT_CONTAINER,
    APP_DIR,
    TOOLS_MOUNT,
    PodRun,
    PodSettings,
    label_value,
    sandbox_network_policy,
    sandbox_pod,
)

logger = logging.getLogger(__name__)

# What the backend calls, as (verb, resource, subresource, group): the start-up check.
PERMISSIONS = (
    ("create", "pods", "", ""),
    ("get", "pods", "", ""),
    ("list", "pods", "", ""),
    ("watch", "pods", "", ""),
    ("delete", "pods", "", ""),
    ("get", "pods", "log", ""),
    ("create", "networkpolicies", "", "networking.k8s.io"),
    ("delete", "networkpolicies", "", "networking.k8s.io"),
)
_PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
_GRACE_SECONDS = 2
_KILL_WAIT = 60.0
_OUTPUTS_WAIT = 60.0
_ARCHIVE_SLACK = 256 * 1024 * 1024
_CHUNK = 256 * 1024


class KubernetesBackend:
    """Launches `KubernetesSandbox`es as Pods; files move through ``exchange``."""

    name = "kubernetes"

    def __init__(
        self,
        client: AsyncClient,
        settings: PodSettings,
        exchange: SandboxExchange,
        *,
        deadline_seconds: int,
    ) -> None:
        self._client = client
        self._settings = settings
        self._exchange = exchange
        self._deadline = deadline_seconds

    @classmethod
    def from_kubeconfig(
        cls,
        kubeconfig: Path | None,
        settings: PodSettings,
        exchange: SandboxExchange,
        *,
        deadline_seconds: int,
    ) -> KubernetesBackend:
        """A backend for ``kubeconfig``, or the in-cluster service account when None."""
        config = (
            KubeConfig.from_file(kubeconfig)
            if kubeconfig is not None
            else KubeConfig.from_service_account()
        )
        client = AsyncClient(config, namespace=settings.namespace)
        return cls(client, settings, exchange, deadline_seconds=deadline_seconds)

    async def ping(self) -> bool:
        try:
            await self._review("create", "pods", "", "")
        except SandboxError:
            return False
        return True

    async def missing_permissions(self) -> list[str]:
        """What the backend needs but may not do in its namespace ("get pods/log", …)."""
        missing = []
        for verb, resource, subresource, group in PERMISSIONS:
            if not await self._review(verb, resource, subresource, group):
                missing.append(f"{verb} {resource}" + (f"/{subresource}" if subresource else ""))
        return missing

    async def _review(self, verb: str, resource: str, subresource: str, group: str) -> bool:
        attributes = {"namespace": self._settings.namespace, "verb": verb, "resource": resource}
        if subresource:
            attributes["subresource"] = subresource
        if group:
            attributes["group"] = group
        review = SelfSubjectAccessReview.from_dict(
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes},
            }
        )
        answer = await call("checking permissions", self._client.create(cast(Any, review)))
        return bool(answer.status and answer.status.allowed)

    async def check_image(self, image: str) -> None:
        """Nothing to check here: the node pulls, and a failed pull fails the run at once."""

    async def launch(self, spec: SandboxSpec) -> KubernetesSandbox:
        spec.check_limits()
        outside = [m for m in spec.mounts if not m.container_path.startswith(TOOLS_MOUNT + "/")]
        if outside:
            raise SandboxLimitError(f"a Pod cannot mount host paths ({outside[0].container_path})")
        spec = dataclasses.replace(spec, mounts=())
        exchange = self._exchange.open()
        run = PodRun(
            token=exchange.token,
            agent=_agent_of(spec.argv),
            deadline_seconds=self._deadline,
            suffix=secrets.token_hex(3),
        )
        try:
            pod = sandbox_pod(spec, self._settings, run)
            policy = sandbox_network_policy(spec, self._settings, run)
        except BaseException:
            self._exchange.close(exchange)
            raise
        return KubernetesSandbox(self._client, self._exchange, exchange, spec, pod, policy)

    async def remove_orphans(self, orphans: Orphans) -> list[str]:
        labels: dict[str, Any] = {LABEL_MANAGED: "true"}
        if orphans.owner is not None:
            labels[LABEL_OWNER] = label_value(orphans.owner)
        pods = self._client.list(Pod, namespace=self._settings.namespace, labels=labels)
        removed: list[str] = []
        async for pod in cast(Any, pods):
            found = pod.metadata.labels or {}
            run_id = found.get(LABEL_RUN_ID, "")
            if pod.metadata.deletionTimestamp or orphans.kept(run_id, found.get(LABEL_SERVER)):
                continue  # kept, or going already
            await _delete(self._client, Pod, pod.metadata.name, self._settings.namespace)
            await _delete(self._client, NetworkPolicy, pod.metadata.name, self._settings.namespace)
            removed.append(run_id)
        return removed

    async def aclose(self) -> None:
        await self._client.close()


class KubernetesSandbox:
    """One Pod. Create with `KubernetesBackend.launch`."""

    def __init__(
        self,
        client: AsyncClient,
        exchanges: SandboxExchange,
        exchange: Exchange,
        spec: SandboxSpec,
        pod: dict[str, Any],
        policy: dict[str, Any],
    ) -> None:
        self._client = client
        self._exchanges = exchanges
        self._exchange = exchange
        self._spec = spec
        self._pod = pod
        self._policy = policy
        self.name: str = pod["metadata"]["name"]
        self._namespace: str = pod["metadata"]["namespace"]
        self._home = PurePosixPath(spec.env.get("HOME", "/tmp/jetty-home"))  # noqa: S108
        self._files: dict[PurePosixPath, bytes | Path] = {}
        self._stderr = TailBuffer()
        self._started = False
        self._logs_taken = False
        self._closed = False

    @property
    def run_id(self) -> str:
        return self._spec.run_id

    async def put_files(self, dest_dir: str, files: Mapping[str, bytes | Path]) -> None:
        if self._started or self._closed:
            raise SandboxStateError("put_files is only possible before start")
        dest = clean_absolute_dir(dest_dir)
        for name, content in files.items():
            path = dest / _clean(name)
            if not (path.is_relative_to(APP_DIR) or path.is_relative_to(self._home)):
                raise SandboxLimitError(f"a Pod takes files only under {APP_DIR} and HOME: {path}")
            self._files[path] = content

    async def start(self) -> None:
        if self._closed:
            raise SandboxStateError("the sandbox is closed")
        if self._started:
            raise SandboxStateError("the sandbox was already started")
        self._started = True
        await anyio.to_thread.run_sync(self._write_inputs)
        await call(
            "creating the NetworkPolicy",
            self._client.create(cast(Any, NetworkPolicy.from_dict(self._policy))),
        )
        await call("creating the Pod", self._client.create(cast(Any, Pod.from_dict(self._pod))))

    def _write_inputs(self) -> None:
        uid, _, gid = (self._spec.user or "").partition(":")
        with tarfile.open(self._exchange.inputs, "w") as tar:
            for path, content in self._files.items():
                data = content.read_bytes() if isinstance(content, Path) else content
                info = tarfile.TarInfo(str(path.relative_to("/")))
                info.size = len(data)
                info.mode = 0o644
                if uid.isdigit():
                    info.uid = int(uid)
                    info.gid = int(gid) if gid.isdigit() else int(uid)
                tar.addfile(info, io.BytesIO(data))

    async def stdout_lines(self) -> AsyncGenerator[str, None]:
        if not self._started:
            raise SandboxStateError("start the sandbox before reading its output")
        if self._logs_taken:
            raise SandboxStateError("stdout_lines can be iterated only once")
        self._logs_taken = True
        if not await self._agent_started():
            return
        lines = self._client.log(
            self.name,
            namespace=self._namespace,
            container=AGENT_CONTAINER,
            follow=True,
            newlines=False,
        )
        try:
            async with aclosing(cast(Any, lines)) as stream:
                async for line in stream:
                    yield line
        except (ApiError, httpx2.HTTPError) as exc:
            if self._closed:
                return  # the Pod was deleted under the stream
            raise SandboxError(f"following the log of Pod {self.name}: {exc}") from exc

    async def _agent_started(self) -> bool:
        """Wait until the agent container runs or ran; False when the Pod ended before."""
        async for pod in self._watch():
            agent = _agent_state(pod)
            if agent.get("running") or agent.get("terminated"):
                return True
            self._raise_for_waiting(pod)
            if _phase(pod) in ("Succeeded", "Failed"):
                return False
        return False

    def _raise_for_waiting(self, pod: Any) -> None:
        status = pod.status
        for entry in [*(status.initContainerStatuses or []), *(status.containerStatuses or [])]:
            waiting = entry.state.waiting if entry.state else None
            if waiting is None:
                continue
            if waiting.reason in _PULL_FAILURES:
                raise ImageNotFound(entry.image) from None
            if waiting.reason == "CreateContainerConfigError":
                raise SandboxError(f"the Pod's {entry.name} container: {waiting.message}")

    async def _watch(self) -> AsyncGenerator[Any, None]:
        events = self._client.watch(
            Pod, namespace=self._namespace, fields={"metadata.name": self.name}
        )
        try:
            async for _, pod in cast(Any, events):
                if pod.status is not None:
                    yield pod
        except (ApiError, httpx2.HTTPError) as exc:
            raise EngineUnavailable(f"watching Pod {self.name}: {exc}") from exc

    async def wait(self, timeout: float | None = None) -> ExitStatus:  # noqa: ASYNC109
        if not self._started:
            raise SandboxStateError("start the sandbox before waiting for it")
        timed_out = False
        with anyio.move_on_after(timeout) as scope:
            pod = await self._ended()
        if scope.cancelled_caught:
            timed_out = True
            await self.kill()
            with anyio.move_on_after(_KILL_WAIT) as kill_scope:
                pod = await self._ended()
            if kill_scope.cancelled_caught:
                raise EngineUnavailable(
                    f"Pod {self.name} still runs {_KILL_WAIT:.0f}s after a stop"
                )
        await self._outputs()
        stderr = self._exchange.parts.get("stderr")
        if stderr is not None:
            self._stderr.feed(await anyio.to_thread.run_sync(stderr.read_bytes))
        terminated = _agent_state(pod).get("terminated")
        if terminated is None:
            raise SandboxError(await self._init_failure(pod))
        deadline = getattr(pod.status, "reason", None) == "DeadlineExceeded"
        return ExitStatus(
            exit_code=int(terminated.exitCode),
            oom_killed=terminated.reason == "OOMKilled",
            timed_out=timed_out or deadline,
        )

    async def _ended(self) -> Any:
        async for pod in self._watch():
            if _phase(pod) in ("Succeeded", "Failed") or _agent_state(pod).get("terminated"):
                return pod
            self._raise_for_waiting(pod)
        raise EngineUnavailable(f"the watch of Pod {self.name} ended")

    async def _outputs(self) -> None:
        with anyio.move_on_after(_OUTPUTS_WAIT):
            await self._exchange.finished.wait()

    async def _init_failure(self, pod: Any) -> str:
        for entry in pod.status.initContainerStatuses or []:
            terminated = entry.state.terminated if entry.state else None
            if terminated is not None and terminated.exitCode != 0:
                tail = ""
                try:
                    lines = self._client.log(
                        self.name, namespace=self._namespace, container=entry.name, tail_lines=5
                    )
                    tail = "".join([line async for line in cast(Any, lines)]).strip()
                except (ApiError, httpx2.HTTPError):
                    pass
                return f"the Pod's {entry.name} step exited with code {terminated.exitCode}" + (
                    f": {tail}" if tail else ""
                )
        return f"Pod {self.name} ended ({_phase(pod)}) before its agent ran"

    def stderr_tail(self) -> str:
        return self._stderr.text()

    async def kill(self) -> None:
        if self._started and not self._closed:
            self._exchange.stop.set()

    async def copy_out(
        self, src_dir: str, dest: Path, max_bytes: int, max_files: int
    ) -> CopyReport:
        if self._closed:
            raise SandboxStateError("the sandbox is closed")
        src = clean_absolute_dir(src_dir)
        part = {PurePosixPath(APP_DIR) / "results": "results", self._home: "home"}.get(src)
        if part is None:
            raise SandboxStateError(f"a Pod sends back only {APP_DIR}/results and HOME, not {src}")
        budget = CopyBudget(max_bytes, max_files)
        await anyio.Path(dest).mkdir(parents=True, exist_ok=True)
        if self._started:
            await self._outputs()
        archive = self._exchange.parts.get(part)
        if archive is None:
            return budget.report
        extractor = ArchiveExtractor(dest, budget, src.name, max_bytes + _ARCHIVE_SLACK)
        await anyio.to_thread.run_sync(_extract, archive, extractor)
        return budget.report

    async def rerun(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        raise SandboxStateError("a Pod runs one process: continue in a new sandbox")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            try:
                if self._started:
                    await _delete(self._client, Pod, self.name, self._namespace)
                    await _delete(self._client, NetworkPolicy, self.name, self._namespace)
            except SandboxError as exc:
                # Recovery (remove_orphans) finds what is left by its labels.
                logger.warning("could not delete Pod %s: %s", self.name, exc)
            finally:
                self._exchanges.close(self._exchange)


async def call(what: str, request: Any) -> Any:
    """Await a lightkube request, its failures as `SandboxError`s."""
    try:
        return await request
    except ApiError as exc:
        status = exc.status
        raise SandboxError(
            f"{what}: the Kubernetes API answered {status.code} {status.reason}: {status.message}"
        ) from exc
    except httpx2.HTTPError as exc:
        raise EngineUnavailable(f"{what}: the Kubernetes API cannot be reached: {exc!r}") from exc


async def _delete(client: AsyncClient, kind: Any, name: str, namespace: str) -> None:
    try:
        await client.delete(kind, name, namespace=namespace, grace_period=_GRACE_SECONDS)
    except ApiError as exc:
        if exc.status.code != 404:
            raise SandboxError(f"deleting {name}: {exc.status.message}") from exc
    except httpx2.HTTPError as exc:
        raise EngineUnavailable(f"deleting {name}: {exc!r}") from exc


def _extract(archive: Path, extractor: ArchiveExtractor) -> None:
    with archive.open("rb") as file:
        while not extractor.stopped and (chunk := file.read(_CHUNK)):
            extractor.feed(chunk)
    extractor.close()


def _agent_of(argv: Sequence[str]) -> str:
    """The agent whose CLI ``argv`` runs (``/opt/jetty/agents/<name>/…``), or ""."""
    prefix = f"{TOOLS_MOUNT}/agents/"
    for arg in argv:
        if arg.startswith(prefix):
            return arg.removeprefix(prefix).split("/", 1)[0]
    return ""


def _phase(pod: Any) -> str:
    return str(pod.status.phase or "")


def _agent_state(pod: Any) -> dict[str, Any]:
    for entry in pod.status.containerStatuses or []:
        if entry.name == AGENT_CONTAINER and entry.state is not None:
            return {
                key: value
                for key in ("waiting", "running", "terminated")
                if (value := getattr(entry.state, key)) is not None
            }
    return {}


__all__ = ["PERMISSIONS", "KubernetesBackend", "KubernetesSandbox"]
