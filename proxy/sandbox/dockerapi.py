"""The Docker Engine API client used by the Docker backend: requests and error mapping.

Pure request shaping (`container_config`) lives here too so that it can be tested without an
engine. The API version is pinned in the URL path, so the engine answers with the 1.41
semantics this code was written against whatever its own version is.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from proxy.sandbox.base import (
    EngineUnavailable,
    ImageNotFound,
    SandboxError,
    SandboxLimitError,
    SandboxSpec,
)

API_VERSION = "1.41"
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"

# Where a read-only root file system still lets a run write: its workspace and temp files.
WRITABLE_DIRS = ("/app", "/tmp")  # noqa: S108 - inside the container


@dataclass(frozen=True)
class ContainerPolicy:
    """How every container of this server is confined, beyond what its spec asks for.

    All capabilities are dropped; ``capabilities`` are added back (none by default: the agent
    CLIs and the run's prelude need none, see docs/sandbox.md). With ``read_only_rootfs`` the
    image's file system cannot be changed; :data:`WRITABLE_DIRS` are then volumes of the
    container (filled from the image, readable after the process exits, removed with it).
    """

    capabilities: tuple[str, ...] = ()
    read_only_rootfs: bool = False


_LIMIT_WORDS = re.compile(r"cpu|memory|pids|limit", re.IGNORECASE)


def resolve_docker_host(docker_host: str | None) -> str:
    """``docker_host``, else ``$DOCKER_HOST``, else the engine's standard socket."""
    return docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def container_config(spec: SandboxSpec, policy: ContainerPolicy | None = None) -> dict[str, Any]:
    """The body of ``POST /containers/create`` for ``spec`` under ``policy``.

    The first argv item becomes the entrypoint so that an image's own ENTRYPOINT/CMD never
    wraps or replaces the command. Mounts use the ``Mounts`` API rather than ``Binds``: it
    fails when the host path is missing instead of silently creating an empty directory, and
    paths may contain ':'.
    """
    policy = policy or ContainerPolicy()
    memory = spec.memory_bytes or 0
    mounts: list[dict[str, Any]] = [
        {
            "Type": "bind",
            "Source": str(mount.host_path),
            "Target": mount.container_path,
            "ReadOnly": mount.read_only,
        }
        for mount in spec.host_mounts()
    ]
    if policy.read_only_rootfs:
        # Labelled like the container, so that volumes a removal left behind can be found.
        options = {"Labels": spec.all_labels()}
        mounts += [
            {"Type": "volume", "Target": target, "VolumeOptions": options}
            for target in WRITABLE_DIRS
        ]
    host_config: dict[str, Any] = {
        "NanoCpus": round(spec.cpus * 1e9) if spec.cpus else 0,
        "Memory": memory,
        # Equal to Memory: no swap, so a memory hog is OOM-killed instead of thrashing.
        "MemorySwap": memory if memory else 0,
        "PidsLimit": spec.pids_limit,
        "CapDrop": ["ALL"],
        "CapAdd": list(policy.capabilities),
        "SecurityOpt": ["no-new-privileges"],
        "Privileged": False,
        "ReadonlyRootfs": policy.read_only_rootfs,
        "NetworkMode": "bridge" if spec.network_enabled else "none",
        "Mounts": mounts,
        # The logs endpoint must be able to read the output back, whatever the daemon default.
        "LogConfig": {"Type": "json-file", "Config": {}},
        "AutoRemove": False,
    }
    return {
        "Image": spec.image,
        "Entrypoint": [spec.argv[0]],
        "Cmd": list(spec.argv[1:]),
        "Env": [f"{key}={value}" for key, value in spec.env.items()],
        "WorkingDir": spec.workdir,
        "User": spec.user or "",
        "Labels": spec.all_labels(),
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "OpenStdin": False,
        "StdinOnce": False,
        "Tty": False,
        "HostConfig": host_config,
    }


def container_name(run_id: str, suffix: str) -> str:
    """A readable, valid container name for a run (Docker allows ``[a-zA-Z0-9][\\w.-]*``)."""
    safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", run_id)[:64]
    return f"jetty-{safe}-{suffix}"


def path_stat_name(response: httpx.Response) -> str | None:
    """The ``name`` from the ``X-Docker-Container-Path-Stat`` header of an archive GET."""
    raw = response.headers.get("x-docker-container-path-stat")
    if not raw:
        return None
    try:
        decoded = json.loads(base64.b64decode(raw))
    except (ValueError, TypeError):
        return None
    name = decoded.get("name") if isinstance(decoded, dict) else None
    return name if isinstance(name, str) else None


class Engine:
    """A thin Docker Engine API client that maps foreign errors to `SandboxError`s."""

    def __init__(self, client: httpx.AsyncClient, where: str) -> None:
        self.client = client
        self.where = where

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 30.0) -> Engine:
        """A client for ``unix:///path/docker.sock``, ``tcp://host:port`` or ``http(s)://``."""
        if url.startswith("unix://"):
            path = url.removeprefix("unix://")
            if not path.startswith("/"):
                raise ValueError(f"Docker socket URL {url!r} must name an absolute path")
            transport = httpx.AsyncHTTPTransport(uds=path)
            base = "http://docker"
        elif url.startswith(("tcp://", "http://", "https://")):
            scheme = "https" if url.startswith("https://") else "http"
            transport = httpx.AsyncHTTPTransport()
            base = f"{scheme}://{url.split('://', 1)[1].rstrip('/')}"
        else:
            raise ValueError(f"unsupported Docker host {url!r}: use unix://, tcp:// or http(s)://")
        client = httpx.AsyncClient(
            transport=transport,
            base_url=f"{base}/v{API_VERSION}",
            timeout=timeout,
            headers={"Accept-Encoding": "identity"},
        )
        return cls(client, url)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def request(
        self, method: str, url: str, *, ok: tuple[int, ...] = (), **kwargs: Any
    ) -> httpx.Response:
        """Send a request; statuses outside 2xx and ``ok`` raise a `SandboxError`."""
        try:
            response = await self.client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise self.unavailable(method, url, exc) from exc
        if not response.is_success and response.status_code not in ok:
            self.raise_for(response, f"{method} {url}")
        return response

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, *, ok: tuple[int, ...] = (), **kwargs: Any
    ) -> AsyncIterator[httpx.Response]:
        """Like `request`, but the body is left unread for streaming."""
        try:
            async with self.client.stream(method, url, **kwargs) as response:
                if not response.is_success and response.status_code not in ok:
                    await response.aread()
                    self.raise_for(response, f"{method} {url}")
                yield response
        except httpx.TransportError as exc:
            raise self.unavailable(method, url, exc) from exc

    def unavailable(self, method: str, url: str, exc: Exception) -> EngineUnavailable:
        return EngineUnavailable(f"Docker engine at {self.where} failed on {method} {url}: {exc!r}")

    def raise_for(self, response: httpx.Response, what: str) -> None:
        message = engine_message(response)
        try:
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            raise SandboxError(
                f"{what}: Docker engine answered {response.status_code}: {message}"
            ) from exc

    async def cpus(self) -> float:
        """How many CPUs the engine's machine has (``GET /info``)."""
        response = await self.request("GET", "/info")
        count = response.json().get("NCPU")
        if not isinstance(count, int) or count < 1:
            raise SandboxError("GET /info: the engine did not say how many CPUs it has")
        return float(count)

    async def require_image(self, image: str) -> None:
        """Raise `ImageNotFound` unless ``image`` is present; never pulls."""
        response = await self.request("GET", f"/images/{quote(image, safe='/:@')}/json", ok=(404,))
        if response.status_code == 404:
            raise ImageNotFound(image)

    async def inspect_image(self, image: str) -> dict[str, Any] | None:
        """``GET /images/{image}/json``, or ``None`` when the engine has no such image."""
        response = await self.request("GET", f"/images/{quote(image, safe='/:@')}/json", ok=(404,))
        if response.status_code == 404:
            return None
        found: dict[str, Any] = response.json()
        return found

    async def list_images(self, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
        """``GET /images/json`` with ``filters`` (e.g. ``{"label": ["key=value"]}``)."""
        response = await self.request(
            "GET", "/images/json", params={"filters": json.dumps(filters)}
        )
        images: list[dict[str, Any]] = response.json()
        return images

    async def tag_image(self, image: str, repository: str, tag: str) -> None:
        """Add the reference ``repository:tag`` to ``image`` (the engine notes the time)."""
        await self.request(
            "POST",
            f"/images/{quote(image, safe='/:@')}/tag",
            params={"repo": repository, "tag": tag},
        )

    async def remove_image(self, image: str) -> bool:
        """Remove one reference (or the image, given an id) without force.

        False when it is gone already or still used by a container (the engine says 409).
        """
        response = await self.request(
            "DELETE", f"/images/{quote(image, safe='/:@')}", ok=(404, 409)
        )
        return response.status_code not in (404, 409)

    async def create(
        self, spec: SandboxSpec, name: str, policy: ContainerPolicy | None = None
    ) -> str:
        """Create a container and return its id."""
        url = "/containers/create"
        body = container_config(spec, policy)
        response = await self.request("POST", url, params={"name": name}, json=body, ok=(400, 404))
        if response.status_code == 404:
            raise ImageNotFound(spec.image)
        if response.status_code == 400:
            message = engine_message(response)
            error = SandboxLimitError if _LIMIT_WORDS.search(message) else SandboxError
            try:
                response.raise_for_status()
            except httpx.HTTPStatusError as exc:
                raise error(f"the engine refused the sandbox: {message}") from exc
        container_id = response.json().get("Id")
        if not isinstance(container_id, str):
            raise SandboxError(f"POST {url}: no container id in the engine's answer")
        return container_id


def engine_message(response: httpx.Response) -> str:
    """The ``message`` of a Docker JSON error body, or the raw text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    message = body.get("message") if isinstance(body, dict) else None
    return message if isinstance(message, str) else str(body)[:500]
