"""Pick a sandbox backend at startup."""

from __future__ import annotations

import logging
import os
from typing import Literal

from proxy.sandbox.base import EngineUnavailable, SandboxBackend
from proxy.sandbox.docker import DockerBackend
from proxy.sandbox.dockerapi import ContainerPolicy
from proxy.sandbox.local import LocalBackend
from proxy.sandbox.rundirs import installation_dir

logger = logging.getLogger(__name__)

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"

BackendKind = Literal["auto", "docker", "local"]


def resolve_docker_host(docker_host: str | None) -> str:
    """``docker_host``, else ``$DOCKER_HOST``, else the engine's standard socket."""
    return docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


async def select_backend(
    kind: BackendKind,
    docker_host: str | None = None,
    *,
    local_bwrap: bool | None = None,
    owner: str | None = None,
    containers: ContainerPolicy | None = None,
) -> SandboxBackend:
    """Return the backend for ``kind``.

    "docker" requires an engine answering ``_ping`` (else `EngineUnavailable`); "auto" uses
    Docker when it answers and falls back to the local backend otherwise; "local" never
    touches Docker. ``local_bwrap`` is the local backend's ``use_bwrap`` (None: when
    installed). With ``owner`` (see `proxy.runs.runtime.sandbox_owner`) local runs go to the
    installation's own directory, where a restarted proxy finds what a crashed one left;
    without, to a fresh temp dir. ``containers`` confines Docker's containers. The caller owns
    the result and must ``aclose()`` it.
    """

    def local() -> LocalBackend:
        base_dir = installation_dir(owner) if owner is not None else None
        return LocalBackend(base_dir, use_bwrap=local_bwrap)

    if kind == "local":
        return local()
    if kind not in ("auto", "docker"):
        raise ValueError(f"unknown sandbox backend {kind!r}: use auto, docker or local")
    url = resolve_docker_host(docker_host)
    docker = DockerBackend.from_url(url, policy=containers)
    if await docker.ping():
        return docker
    await docker.aclose()
    if kind == "docker":
        raise EngineUnavailable(f"no Docker engine answers at {url}")
    logger.info("no Docker engine answers at %s; using the local sandbox backend", url)
    return local()
