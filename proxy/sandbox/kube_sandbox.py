"""One sandbox as one Pod, over the Kubernetes API (see `proxy.sandbox.kubernetes`).

What each call does to the cluster::

    put_files  files under /app or HOME join the Pod's inputs (a tar the exchange serves)
    start      the NetworkPolicy, then the Pod, are created
    stdout     once the agent container runs: its log, followed (the agent's stdout alone);
               an image the node cannot pull fails at once with `ImageNotFound`
    wait       the agent container's end, then the outputs it sends (timeout: the exchange
               tells the Pod to stop, the agent is killed and its outputs still arrive)
    copy_out   /app/results or HOME, from the archives the Pod sent, with Docker's rules
    close      the Pod (grace 2 s) and its NetworkPolicy are deleted

lightkube is the ``kubernetes`` extra: import this module only when the backend is chosen.
"""

from __future__ import annotations

import io
import logging
import tarfile
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from pathlib import Path, PurePosixPath
from typing import Any, cast

import anyio
import anyio.to_thread
import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import Pod
from lightkube.resources.networking_v1 import NetworkPolicy

from proxy.sandbox.base import (
    CopyReport,
    EngineUnavailable,
    ExitStatus,
    FileContent,
    ImageNotFound,
    SandboxError,
    SandboxLimitError,
    SandboxSpec,
    SandboxStateError,
)
from proxy.sandbox.files import ArchiveExtractor, CopyBudget, clean_absolute_dir
from proxy.sandbox.files import clean_relative_path as _clean
from proxy.sandbox.frames import TailBuffer
from proxy.sandbox.kube_exchange import Exchange, SandboxExchange
from proxy.sandbox.kube_objects import AGENT_CONTAINER, APP_DIR, GRACE_SECONDS
from proxy.sandbox.spool import local_contents

logger = logging.getLogger(__name__)

_PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
_ENDED = ("Succeeded", "Failed")
# How long the outputs of an agent that stopped may take to arrive.
_OUTPUTS_WAIT = 120.0
# Bytes of archive read past max_bytes (to list the files skipped for size) before giving up.
ARCHIVE_SLACK = 256 * 1024 * 1024
_CHUNK = 256 * 1024


class KubernetesSandbox:
    """One Pod. Create with `~proxy.sandbox.kubernetes.KubernetesBackend.launch`."""

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
        self._owner = _numeric_owner(spec.user)
        self._stderr = TailBuffer()
        self._stderr_read = False
        self._started = False
        self._logs_taken = False
        self._closed = False

    @property
    def run_id(self) -> str:
        return self._spec.run_id

    async def put_files(self, dest_dir: str, files: Mapping[str, FileContent]) -> None:
        if self._started or self._closed:
            raise SandboxStateError("put_files is only possible before start")
        dest = clean_absolute_dir(dest_dir)
        paths = {name: dest / _clean(name) for name in files}
        for path in paths.values():
            if not (path.is_relative_to(APP_DIR) or path.is_relative_to(self._home)):
                raise SandboxLimitError(f"a Pod takes files only under {APP_DIR} and HOME: {path}")
        async with local_contents(files) as contents:
            members = {paths[name]: content for name, content in contents.items()}
            await anyio.to_thread.run_sync(self._add_inputs, members)

    def _add_inputs(self, members: Mapping[PurePosixPath, bytes | Path]) -> None:
        with tarfile.open(self._exchange.inputs, "a") as tar:
            for path, content in members.items():
                info = tarfile.TarInfo(str(path.relative_to("/")))
                info.mode = 0o644
                if self._owner is not None:
                    info.uid, info.gid = self._owner
                if isinstance(content, Path):
                    with content.open("rb") as file:
                        info.size = content.stat().st_size
                        tar.addfile(info, file)
                else:
                    info.size = len(content)
                    tar.addfile(info, io.BytesIO(content))

    async def start(self) -> None:
        if self._closed:
            raise SandboxStateError("the sandbox is closed")
        if self._started:
            raise SandboxStateError("the sandbox was already started")
        self._started = True
        await call(
            "creating the NetworkPolicy",
            self._client.create(cast(Any, NetworkPolicy.from_dict(self._policy))),
        )
        await call("creating the Pod", self._client.create(cast(Any, Pod.from_dict(self._pod))))

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
            _raise_for_waiting(pod)
            if _phase(pod) in _ENDED:
                return False
        return False

    async def wait(self, timeout: float | None = None) -> ExitStatus:  # noqa: ASYNC109
        if not self._started:
            raise SandboxStateError("start the sandbox before waiting for it")
        with anyio.move_on_after(timeout) as scope:
            pod = await self._ended()
        if scope.cancelled_caught:
            await self.kill()
            await self._outputs()
            await self._read_stderr()
            return ExitStatus(exit_code=137, timed_out=True)
        terminated = _agent_state(pod).get("terminated")
        if terminated is None:
            raise SandboxError(await self._init_failure(pod))
        await self._outputs()
        await self._read_stderr()
        return ExitStatus(
            exit_code=int(terminated.exitCode),
            oom_killed=terminated.reason == "OOMKilled",
            timed_out=getattr(pod.status, "reason", None) == "DeadlineExceeded",
        )

    async def _ended(self) -> Any:
        """The Pod once its agent container ended (or the Pod did, before it ran)."""
        async for pod in self._watch():
            if _phase(pod) in _ENDED or _agent_state(pod).get("terminated"):
                return pod
            _raise_for_waiting(pod)
        raise SandboxError(f"Pod {self.name} was deleted before its agent ended")

    async def _outputs(self) -> None:
        """Until the Pod's outputs have arrived, or none will: the agent ended (the Pod sends
        them before it does), or it was told to stop before it ever ran."""
        exchange = self._exchange
        if exchange.finished.is_set():
            return
        with anyio.move_on_after(_OUTPUTS_WAIT):
            async with anyio.create_task_group() as group:

                async def arrived() -> None:
                    await exchange.finished.wait()
                    group.cancel_scope.cancel()

                group.start_soon(arrived)
                async for pod in self._watch():
                    agent = _agent_state(pod)
                    if agent.get("terminated") or _phase(pod) in _ENDED:
                        break
                    if exchange.stop.is_set() and not agent.get("running"):
                        break
                group.cancel_scope.cancel()

    async def _read_stderr(self) -> None:
        stderr = self._exchange.parts.get("stderr")
        if stderr is not None and not self._stderr_read:
            self._stderr_read = True
            self._stderr.feed(await anyio.to_thread.run_sync(stderr.read_bytes))

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

    async def _watch(self) -> AsyncGenerator[Any, None]:
        """The Pod as it changes (first as it is); ends when it is deleted."""
        events = self._client.watch(
            Pod, namespace=self._namespace, fields={"metadata.name": self.name}
        )
        try:
            async with aclosing(cast(Any, events)) as stream:
                async for kind, pod in stream:
                    if kind == "DELETED":
                        return
                    if pod.status is not None:
                        yield pod
        except (ApiError, httpx2.HTTPError) as exc:
            raise EngineUnavailable(f"watching Pod {self.name}: {exc}") from exc

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
        extractor = ArchiveExtractor(dest, budget, src.name, max_bytes + ARCHIVE_SLACK)
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
                    await delete(self._client, Pod, self.name, self._namespace)
                    await delete(self._client, NetworkPolicy, self.name, self._namespace)
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


async def delete(client: AsyncClient, kind: Any, name: str, namespace: str) -> None:
    """Delete an object (a Pod with a grace of 2 s); one that is gone already is fine."""
    try:
        await client.delete(kind, name, namespace=namespace, grace_period=GRACE_SECONDS)
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


def _raise_for_waiting(pod: Any) -> None:
    """`ImageNotFound` for an image the node cannot pull (the run would wait for ever)."""
    status = pod.status
    for entry in [*(status.initContainerStatuses or []), *(status.containerStatuses or [])]:
        waiting = entry.state.waiting if entry.state else None
        if waiting is None:
            continue
        if waiting.reason in _PULL_FAILURES:
            reason = f"{waiting.reason}: {waiting.message}" if waiting.message else waiting.reason
            raise ImageNotFound(entry.image, reason) from None
        if waiting.reason == "CreateContainerConfigError":
            raise SandboxError(f"the Pod's {entry.name} container: {waiting.message}")


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


def _numeric_owner(user: str | None) -> tuple[int, int] | None:
    uid, _, gid = (user or "").partition(":")
    if not uid.isdigit():
        return None
    return int(uid), int(gid) if gid.isdigit() else int(uid)


__all__ = ["ARCHIVE_SLACK", "KubernetesSandbox", "call", "delete"]
