"""Docker backend: one container per sandbox, driven over the Engine API (no docker CLI).

Lifecycle against the engine: ``GET /images/{name}/json`` (a missing image raises
`ImageNotFound`; nothing is ever pulled) → ``POST /containers/create``, then the sandbox
(`proxy.sandbox.docker_sandbox.DockerSandbox`) → ``DELETE /containers/{id}?force=1``.

`rerun` restarts the exited container (same filesystem) with a new command line. A container's
command cannot change after it is created, so every container starts through a small
``/bin/sh`` dispatcher: if ``/tmp/.jetty-rerun`` exists it is sourced (it deletes itself, sets the
new environment and ``exec``s the new command), else the spec's argv runs as given. Images
therefore need ``/bin/sh``. The logs of a rerun are read from the moment the previous process
ended (``since``), so each process's output is its own.

`launch_warm` creates and starts a container whose dispatcher, instead of a command, sources
the FIFO of its `~proxy.sandbox.claims.ClaimChannel`: it waits there, with no command,
environment or file of any run, until a run claims it; `DockerSandbox.start` then writes the
run's start script into the FIFO instead of starting the container. A warm container with a
`~proxy.sandbox.warm.Standby` starts it first, its stdin the claim directory's standby FIFO,
held open by the dispatcher; a takeover's start script writes the run's input there.

Files put into a sandbox are owned by root, unless ``spec.user`` is numeric ("uid" or
"uid:gid"), in which case they (and any directories created for them) belong to that user.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import httpx

from proxy.sandbox.base import (
    LABEL_MANAGED,
    LABEL_OWNER,
    LABEL_RUN_ID,
    LABEL_SERVER,
    Capabilities,
    EngineUnavailable,
    Isolation,
    Mount,
    Orphans,
    SandboxError,
    SandboxSpec,
    SandboxStateError,
)
from proxy.sandbox.claims import (
    CLAIM_FIFO,
    CLAIM_MOUNT,
    STANDBY_ENV,
    STANDBY_FIFO,
    ClaimChannel,
)
from proxy.sandbox.docker_sandbox import RERUN_SCRIPT, DockerSandbox
from proxy.sandbox.dockerapi import (
    API_VERSION,
    ContainerPolicy,
    Engine,
    container_name,
    resolve_docker_host,
)
from proxy.sandbox.shell import exec_script
from proxy.sandbox.warm import Standby, Takeover, WarmSpec

if TYPE_CHECKING:
    from proxy.settings import Settings

__all__ = ["DockerBackend", "DockerSandbox", "DockerWarmSandbox", "open_docker"]

logger = logging.getLogger(__name__)

_DISPATCH = f'if [ -f {RERUN_SCRIPT} ]; then . {RERUN_SCRIPT}; fi; exec "$@"'
# A warm container's dispatcher: a rerun script (after its first run), else its claim.
_WAITER = f"if [ -f {RERUN_SCRIPT} ]; then . {RERUN_SCRIPT}; fi; . {CLAIM_MOUNT}/{CLAIM_FIFO}"
# The same, starting a standby first (see `_standby_waiter`).
_STANDBY_FIFO = f"{CLAIM_MOUNT}/{STANDBY_FIFO}"
# How long a started warm container may take to wait on its claim.
_WARM_READY_TIMEOUT = 30.0


async def open_docker(settings: Settings, owner: str | None) -> DockerBackend:
    """The backend on ``settings.docker_host`` (else ``$DOCKER_HOST``, else the standard
    socket); `EngineUnavailable` when no engine answers there. Labels say whose a container
    is, so ``owner`` is not needed here."""
    url = resolve_docker_host(settings.docker_host)
    policy = ContainerPolicy(tuple(settings.run_capabilities), settings.run_read_only_rootfs)
    # One directory per installation: the next server removes what a crashed one left there.
    claims = Path(tempfile.gettempdir()) / f"jetty-claims-{os.getuid()}-{owner or 'default'}"
    docker = DockerBackend.from_url(url, policy=policy, claims_dir=claims)
    if await docker.ping():
        return docker
    await docker.aclose()
    raise EngineUnavailable(f"no Docker engine answers at {url}")


class DockerBackend:
    """Launches `DockerSandbox`es on one Docker engine.

    ``transport`` is any httpx async transport: `from_url` builds one for a unix socket or
    TCP endpoint, tests pass ``httpx.MockTransport``. ``policy`` confines every container
    (capabilities, read-only root file system). A spec's ``cpus`` above what the engine's
    machine has is lowered to that (the engine would refuse the container). ``claims_dir``
    holds the claim FIFOs of warm containers (a private temporary directory by default); the
    engine must run on this machine to mount them, as it must for the agent CLIs.
    """

    name = "docker"
    capabilities = Capabilities(
        runs_images=True,
        builds_images=True,
        # argv reaches the container as given: files written by the start command save a
        # copy into the created container (a mount of its file system, ~100 ms on 20.10).
        inline_files=True,
        reruns=True,
        warm_pool=True,
        isolation=Isolation.FULL,
        mounts_host=True,
    )

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        base_url: str = "http://docker",
        where: str = "docker",
        timeout: float = 30.0,
        policy: ContainerPolicy | None = None,
        claims_dir: Path | None = None,
    ) -> None:
        client = httpx.AsyncClient(
            transport=transport,
            base_url=f"{base_url}/v{API_VERSION}",
            timeout=timeout,
            # The engine gzips archives when asked to; over a local socket that is wasted CPU.
            headers={"Accept-Encoding": "identity"},
        )
        self._engine = Engine(client, where)
        self._policy = policy or ContainerPolicy()
        self._cpus: float | None = None
        self._claims = claims_dir
        # Made (and removed at aclose) only when no claims_dir was given.
        self._own_claims: Path | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout: float = 30.0,
        policy: ContainerPolicy | None = None,
        claims_dir: Path | None = None,
    ) -> DockerBackend:
        """A backend for ``unix:///path/docker.sock``, ``tcp://host:port`` or ``http(s)://``."""
        if url.startswith("unix://"):
            path = url.removeprefix("unix://")
            if not path.startswith("/"):
                raise ValueError(f"Docker socket URL {url!r} must name an absolute path")
            transport = httpx.AsyncHTTPTransport(uds=path)
            return cls(transport, where=url, timeout=timeout, policy=policy, claims_dir=claims_dir)
        if url.startswith(("tcp://", "http://", "https://")):
            scheme = "https" if url.startswith("https://") else "http"
            base = f"{scheme}://{url.split('://', 1)[1].rstrip('/')}"
            transport = httpx.AsyncHTTPTransport()
            return cls(
                transport,
                base_url=base,
                where=url,
                timeout=timeout,
                policy=policy,
                claims_dir=claims_dir,
            )
        raise ValueError(f"unsupported Docker host {url!r}: use unix://, tcp:// or http(s)://")

    async def ping(self) -> bool:
        try:
            response = await self._engine.client.get("/_ping", timeout=3.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def check_image(self, image: str) -> None:
        await self._engine.require_image(image)

    async def launch(self, spec: SandboxSpec) -> DockerSandbox:
        spec.check_limits()
        name = container_name(spec.run_id, secrets.token_hex(4))
        argv = ["/bin/sh", "-c", _DISPATCH, "jetty-sandbox", *spec.argv]
        container_id = await self._create(spec, argv, name)
        sandbox = DockerSandbox(self._engine, container_id, spec)
        try:
            await sandbox.claim_workdir()
        except BaseException:
            await sandbox.close()
            raise
        return sandbox

    async def launch_warm(self, spec: WarmSpec) -> DockerWarmSandbox:
        name = container_name(spec.id, secrets.token_hex(4))
        channel = await anyio.to_thread.run_sync(ClaimChannel.create, self._claims_root(), name)
        if spec.standby is not None:
            environment = exec_script((), spec.standby.env, exec_argv=False)
            await anyio.to_thread.run_sync(channel.write_standby_env, environment)
        # What the container is created with: the warm spec, and nothing of a run.
        created = SandboxSpec(
            run_id=spec.id,
            collection="",
            image=spec.image,
            argv=["/bin/sh", "-c", _standby_waiter(spec.standby) if spec.standby else _WAITER],
            workdir=spec.workdir,
            mounts=(*spec.mounts, Mount(channel.directory, CLAIM_MOUNT)),
            cpus=spec.cpus,
            memory_bytes=spec.memory_bytes,
            pids_limit=spec.pids_limit,
            network_enabled=spec.network_enabled,
            user=spec.user,
            labels=spec.all_labels(),
        )
        created.check_limits()
        try:
            container_id = await self._create(created, created.argv, name)
        except BaseException:
            channel.remove()
            raise
        warm = DockerWarmSandbox(self._engine, container_id, spec, created, channel)
        try:
            await warm.start()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await warm.close()
            raise
        return warm

    async def _create(self, spec: SandboxSpec, argv: Sequence[str], name: str) -> str:
        """Create ``spec``'s container running ``argv``; its id."""
        # No image check first (4 ms): create answers 404 for a missing image, which
        # Engine.create turns into ImageNotFound; nothing is ever pulled.
        cpus = spec.cpus
        if cpus is not None:
            if self._cpus is None:
                self._cpus = await self._engine.cpus()
            cpus = min(cpus, self._cpus)
        container = dataclasses.replace(spec, argv=list(argv), cpus=cpus)
        return await self._engine.create(container, name, self._policy)

    def _claims_root(self) -> Path:
        if self._claims is None:
            self._own_claims = Path(tempfile.mkdtemp(prefix="jetty-claims-"))
            self._claims = self._own_claims
        return self._claims

    async def remove_orphans(self, orphans: Orphans) -> list[str]:
        labels = [f"{LABEL_MANAGED}=true"]
        if orphans.owner is not None:
            labels.append(f"{LABEL_OWNER}={orphans.owner}")
        filters = json.dumps({"label": labels})
        response = await self._engine.request(
            "GET", "/containers/json", params={"all": "1", "filters": filters}
        )
        removed: list[str] = []
        for container in response.json():
            labels_of = container.get("Labels") or {}
            run_id = labels_of.get(LABEL_RUN_ID, "")
            if orphans.kept(run_id, labels_of.get(LABEL_SERVER)):
                continue
            await self._engine.request(
                "DELETE",
                f"/containers/{container['Id']}",
                params={"force": "1", "v": "1"},  # its anonymous volumes too
                ok=(404, 409),
            )
            removed.append(run_id)
            if self._claims is not None:  # a warm container's claim directory
                for name in container.get("Names") or ():
                    claim = self._claims / str(name).lstrip("/")
                    await anyio.to_thread.run_sync(_remove_tree, claim)
        # The volumes of containers removed without theirs (by hand, or by another tool).
        await self._engine.request("POST", "/volumes/prune", params={"filters": filters})
        return removed

    async def aclose(self) -> None:
        await self._engine.client.aclose()
        if self._own_claims is not None:
            await anyio.to_thread.run_sync(_remove_tree, self._own_claims)


class DockerWarmSandbox:
    """A started container waiting on its claim. Create with `DockerBackend.launch_warm`."""

    def __init__(
        self,
        engine: Engine,
        container_id: str,
        spec: WarmSpec,
        created: SandboxSpec,
        channel: ClaimChannel,
    ) -> None:
        self._engine = engine
        self.container_id = container_id
        self._spec = spec
        self._created = created
        self._channel = channel
        self._claimed = False
        self._closed = False

    @property
    def spec(self) -> WarmSpec:
        return self._spec

    async def start(self) -> None:
        """Start the container and wait until it waits on its claim."""
        await DockerSandbox(self._engine, self.container_id, self._created).claim_workdir()
        await self._engine.request("POST", f"/containers/{self.container_id}/start", ok=(304,))
        await self._channel.connect(timeout=_WARM_READY_TIMEOUT)

    async def claim(self, spec: SandboxSpec, takeover: Takeover | None = None) -> DockerSandbox:
        if self._claimed or self._closed:
            raise SandboxStateError("the warm sandbox was claimed or closed already")
        if not self._spec.fits(spec):
            raise SandboxStateError("the run does not fit the warm sandbox")
        standby = self._spec.standby is not None
        if takeover is not None and not standby:
            raise SandboxStateError("the warm sandbox has no standby to take over")
        if not self._channel.alive():
            raise SandboxError(f"warm container {self.container_id} no longer waits")
        self._claimed = True
        # The container's own labels name the warm sandbox, not the run (see Sandbox.run_id).
        owned = dataclasses.replace(spec, run_id=self._spec.id)
        return DockerSandbox(
            self._engine,
            self.container_id,
            owned,
            claim=self._channel,
            standby=standby,
            takeover=takeover,
        )

    async def close(self) -> None:
        if self._claimed or self._closed:
            return
        self._closed = True
        await DockerSandbox(self._engine, self.container_id, self._created).close()
        self._channel.remove()


def _standby_waiter(standby: Standby) -> str:
    """The dispatcher of a warm container with a standby: it opens the standby's FIFO for
    reading and writing as fd 3 (so the standby's own open does not wait), starts the standby
    on it without fd 3 (``$JETTY_STANDBY``), its environment sourced from the claim
    directory, then waits on its claim as `_WAITER` does."""
    claim = f"{CLAIM_MOUNT}/{CLAIM_FIFO}"
    return "\n".join(
        [
            f"if [ -f {RERUN_SCRIPT} ]; then . {RERUN_SCRIPT}; fi",
            f"exec 3<>{_STANDBY_FIFO}",
            "(",
            f". {CLAIM_MOUNT}/{STANDBY_ENV}",
            exec_script(standby.argv, {}),
            f") <{_STANDBY_FIFO} 3<&- &",
            "JETTY_STANDBY=$!",
            # The standby's exit (SIGCHLD) can interrupt the open of the claim's FIFO, which
            # `.` does not retry: again, while the FIFO is there (`command`: a failed `.`
            # must not end the shell).
            f"until command . {claim}; do [ -p {claim} ] || exit 125; done",
            "",
        ]
    )


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
