"""Image work on the Docker engine: pull, build, check for bash, list what we made.

Everything goes through the Engine API (`proxy.sandbox.dockerapi.Engine`), pinned to 1.41::

    POST /images/create?fromImage=NAME&tag=TAG   pull; streams JSON progress messages
    POST /build?t=TAG&labels=…&buildargs=…       classic builder; the body is a tar context
    POST /images/{name}/push?tag=TAG             push; streams JSON progress messages
    POST /containers/create + start + wait       `bash -c true` in the image, then removed
    GET  /images/json?filters=…                  images we built or pulled, for pruning

No credentials are ever sent (an empty ``X-Registry-Auth``): only public images can be
pulled, and pushes go to registries that take anonymous pushes. The
engine reports pull failures as free text, so `pull_error` reads it into our error classes;
the phrases it looks for are the registry protocol's own (``manifest unknown``,
``unauthorized``, ``no basic auth credentials``), which every registry and engine version
uses.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from proxy.environments.errors import (
    BuildFailed,
    EnvironmentFailed,
    ImageNotFound,
    ImageNotPublic,
    RegistryUnreachable,
    WrongPlatform,
)
from proxy.environments.progress import BuildLog, PullProgress
from proxy.jetty.imageref import parse_image_ref
from proxy.sandbox.base import LABEL_MANAGED, SandboxError
from proxy.sandbox.dockerapi import Engine, engine_message

__all__ = ["ImageEngine", "Progress", "pull_error"]

logger = logging.getLogger("proxy.environments")

Progress = Callable[[str], Awaitable[None]]

LABEL_CHECK = "jetty-proxy.environment-check"
# Pulls and builds can be silent for minutes (a large layer, a slow apt step); no read timeout.
_STREAM_TIMEOUT = httpx.Timeout(30.0, read=None)
_CHECK_TIMEOUT = 60.0
_ANY_ERROR = tuple(range(400, 600))
_EXIT_CODE = re.compile(r"returned a non-zero code: (\d+)")
_NOT_PUBLIC = re.compile(
    r"unauthorized|authentication required|no basic auth credentials|denied|\b40[13]\b"
)
_NOT_FOUND = ("manifest unknown", "not found", "does not exist", "name unknown")
_UNREACHABLE = (
    "connection refused",
    "no such host",
    "i/o timeout",
    "network is unreachable",
    "server gave http response to https client",
    "tls:",
    "x509:",
)


def pull_error(reference: str, status: int, message: str) -> EnvironmentFailed:
    """The error for a failed pull of ``reference``, from the engine's status and message."""
    lower = message.lower()
    if "repository does not exist or may require" in lower:
        # Docker Hub answers the same for a missing and a private repository.
        return ImageNotFound(
            f"Image {reference} was not found: the repository does not exist, or it is private"
            f" (only public images can be used). The registry said: {message}"
        )
    if _NOT_PUBLIC.search(lower):
        return ImageNotPublic(
            f"The registry of {reference} asks for credentials: the image must be public"
            f" (this server never sends registry credentials). The registry said: {message}"
        )
    if "no matching manifest" in lower:
        return WrongPlatform(
            f"Image {reference} has no linux/amd64 variant, the only platform runs support."
            f" The registry said: {message}"
        )
    if status == 404 or any(word in lower for word in _NOT_FOUND):
        return ImageNotFound(
            f"Image {reference} was not found: the registry has no such repository or tag."
            f" The registry said: {message}"
        )
    if any(word in lower for word in _UNREACHABLE):
        return RegistryUnreachable(f"The registry of {reference} could not be reached: {message}")
    return EnvironmentFailed(f"Pulling {reference} failed: {message}", code="image_pull_failed")


class ImageEngine:
    """The image calls environments need, on one engine. Foreign errors stay `SandboxError`s."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str) -> ImageEngine:
        return cls(Engine.from_url(url))

    async def aclose(self) -> None:
        await self.engine.aclose()

    async def inspect(self, image: str) -> dict[str, Any] | None:
        return await self.engine.inspect_image(image)

    async def pull(self, reference: str, progress: Progress) -> PullProgress:
        """Pull ``reference``, reporting progress; raise a classified error on failure."""
        ref = parse_image_ref(reference)
        name = f"{ref.registry}/{ref.repository}" if ref.registry else ref.repository
        params = {"fromImage": name, "tag": ref.digest or ref.tag or "latest"}
        state = PullProgress(reference)
        async with self.engine.stream(
            "POST", "/images/create", params=params, ok=_ANY_ERROR, timeout=_STREAM_TIMEOUT
        ) as response:
            if not response.is_success:
                await response.aread()
                raise pull_error(reference, response.status_code, engine_message(response))
            async for message in _messages(response):
                line = state.feed(message)
                if line is not None:
                    await progress(line)
        if state.error is not None:
            raise pull_error(reference, 200, state.error)
        await progress(state.summary())
        return state

    async def build(
        self,
        archive: bytes | AsyncIterable[bytes],
        *,
        tag: str,
        labels: Mapping[str, str],
        progress: Progress,
        build_args: Mapping[str, str] | None = None,
        dockerfile: str = "Dockerfile",
    ) -> str:
        """Build ``archive`` (a tar context, whole or streamed) with the classic builder;
        return the image id."""
        params = {
            "t": tag,
            "dockerfile": dockerfile,
            "labels": json.dumps(dict(labels)),
            "buildargs": json.dumps(dict(build_args or {})),
            "rm": "1",
            "forcerm": "1",
        }
        log = BuildLog()
        async with self.engine.stream(
            "POST",
            "/build",
            params=params,
            content=archive,
            headers={"Content-Type": "application/x-tar"},
            ok=_ANY_ERROR,
            timeout=_STREAM_TIMEOUT,
        ) as response:
            if not response.is_success:
                await response.aread()
                raise BuildFailed(f"The build of {tag} failed", engine_message(response))
            async for message in _messages(response):
                text = log.feed(message)
                if text is not None:
                    await progress(text)
        rest = log.flush()
        if rest is not None:
            await progress(rest)
        if log.error is not None:
            await self._remove_leftovers(log.created)
            # The engine's message repeats the whole RUN line; its exit code is what matters.
            code = _EXIT_CODE.search(log.error)
            why = f"a step exited with code {code[1]}" if code else log.error
            raise BuildFailed(f"The build of {tag} failed: {why}", log.tail())
        info = await self.engine.inspect_image(tag)
        if info is None:
            raise BuildFailed(f"The build of {tag} ended without an image", log.tail())
        image_id: str = info["Id"]
        return image_id

    async def push(self, reference: str, progress: Progress) -> str | None:
        """Push ``reference`` (``registry/repository:tag``) anonymously; its digest if told.

        Raises `EnvironmentFailed` (code ``image_push_failed``) with the engine's or the
        registry's message, e.g. when the registry asks for credentials.
        """
        ref = parse_image_ref(reference)
        name = f"{ref.registry}/{ref.repository}" if ref.registry else ref.repository
        headers = {"X-Registry-Auth": base64.urlsafe_b64encode(b"{}").decode()}
        digest: str | None = None
        async with self.engine.stream(
            "POST",
            f"/images/{quote(name, safe='/:')}/push",
            params={"tag": ref.tag or "latest"},
            headers=headers,
            ok=_ANY_ERROR,
            timeout=_STREAM_TIMEOUT,
        ) as response:
            if not response.is_success:
                await response.aread()
                raise _push_error(reference, engine_message(response))
            async for message in _messages(response):
                error = message.get("error") or (message.get("errorDetail") or {}).get("message")
                if error:
                    raise _push_error(reference, str(error))
                aux = message.get("aux")
                if isinstance(aux, dict) and isinstance(aux.get("Digest"), str):
                    digest = aux["Digest"]
                status = message.get("status")
                if isinstance(status, str) and not message.get("id"):
                    await progress(status)
        return digest

    async def _remove_leftovers(self, images: list[str]) -> None:
        """Remove the untagged intermediate images a failed build made, newest first.

        One that anything else still uses is refused by the engine (409) and stays.
        """
        with anyio.CancelScope(shield=True):
            for image in reversed(images):
                try:
                    info = await self.engine.inspect_image(image)
                    if info is None or info.get("RepoTags"):
                        continue  # gone, or something else's: only untagged leftovers go
                    await self.engine.remove_image(image)
                except SandboxError as exc:
                    logger.warning("could not remove image %s of a failed build: %s", image, exc)

    async def runs_bash(self, image: str) -> bool:
        """Whether ``bash -c true`` succeeds in ``image`` (no network, removed afterwards)."""
        body = {
            "Image": image,
            "Entrypoint": ["bash"],
            "Cmd": ["-c", "true"],
            "Labels": {LABEL_MANAGED: "true", LABEL_CHECK: "bash"},
            "HostConfig": {
                "NetworkMode": "none",
                "CapDrop": ["ALL"],
                "SecurityOpt": ["no-new-privileges"],
                "PidsLimit": 16,
                "AutoRemove": False,
            },
        }
        response = await self.engine.request("POST", "/containers/create", json=body)
        container = f"/containers/{response.json()['Id']}"
        try:
            with anyio.fail_after(_CHECK_TIMEOUT):
                started = await self.engine.request("POST", f"{container}/start", ok=(400, 500))
                if not started.is_success:
                    message = engine_message(started).lower()
                    if "not found" in message or "no such file" in message:
                        return False
                    raise SandboxError(f"checking {image} for bash: {engine_message(started)}")
                waited = await self.engine.request("POST", f"{container}/wait", timeout=None)
                return int(waited.json().get("StatusCode", 1)) == 0
        finally:
            with anyio.CancelScope(shield=True):
                await self.engine.request(
                    "DELETE", container, params={"force": "1", "v": "1"}, ok=(404, 409)
                )

    async def images(self, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
        return await self.engine.list_images(filters)

    async def tag(self, image: str, reference: str) -> None:
        """Point ``reference`` (``repo:tag``) at ``image``; also marks it used now."""
        repository, _, tag = reference.rpartition(":")
        await self.engine.tag_image(image, repository, tag)

    async def remove(self, reference: str) -> bool:
        return await self.engine.remove_image(reference)


def _push_error(reference: str, message: str) -> EnvironmentFailed:
    return EnvironmentFailed(f"Pushing {reference} failed: {message}", code="image_push_failed")


async def _messages(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of a progress stream; lines that are not JSON objects are skipped."""
    async for line in response.aiter_lines():
        line = line.strip()
        if not line:
            continue
        try:
            message = json.loads(line)
        except ValueError:
            logger.debug("skipping a progress line that is not JSON: %r", line[:200])
            continue
        if isinstance(message, dict):
            yield message
