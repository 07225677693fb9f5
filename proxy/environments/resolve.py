"""Turn a run's `Environment` into an image on the engine: look up, pull or build it.

Two halves, for the two moments of a request, and the decision travels between them::

    environments = Environments.from_settings(settings)     # once, in the app's lifespan
    checked = await environments.check(plan.environment)    # before the run: 4xx/503
    resolved = await environments.prepare(checked, progress=say)  # in the run: slow, streamed

`Environments.check` refuses what needs no pull or build to know (unknown snapshot, bad
package, unbuilt snapshot) and decides, once, the image the run will use: a
`CheckedEnvironment`. `prepare` does the slow part for that decision, reporting through
``progress``; the second time round it finds the image and does neither. `resolve` is both in
one call. Every verdict that costs a container (does the image run bash?) is cached per image
id for the life of the object.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.to_thread

from proxy.environments import cache
from proxy.environments.catalog import Catalog, Snapshot, check_environment
from proxy.environments.dockerfile import (
    CA_BUNDLE_NAME,
    BuildContext,
    BuildSpec,
    context_archive,
    render,
)
from proxy.environments.engine import ImageEngine, Progress
from proxy.environments.errors import (
    EnvironmentEngineUnavailable,
    EnvironmentFailed,
    NoBash,
    SnapshotNotBuilt,
    WrongPlatform,
)
from proxy.jetty.plan import Environment
from proxy.sandbox.base import SandboxError
from proxy.sandbox.dockerapi import resolve_docker_host
from proxy.settings import Settings

__all__ = ["PLATFORM", "CheckedEnvironment", "Environments", "ResolvedImage"]

logger = logging.getLogger("proxy.environments")

PLATFORM = ("linux", "amd64")
LABEL_SNAPSHOT = "jetty-proxy.snapshot"
LABEL_DIGEST = "jetty-proxy.environment.digest"
LABEL_BASH = "jetty-proxy.bash"
_VERDICTS_KEPT = 1024


@dataclass(frozen=True, slots=True)
class CheckedEnvironment:
    """An environment that passed the checks: the image a run will use, decided once.

    ``reference`` is that image. ``snapshot`` is set when it is a snapshot's; ``build`` (with
    its ``base`` image) when it is a package build. A backend without an image engine runs
    ``reference`` as it is; with one, `Environments.prepare` makes sure it is there.
    """

    environment: Environment
    reference: str
    snapshot: Snapshot | None = None
    build: BuildContext | None = None
    base: str | None = None


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    """The image a run uses. ``digest`` is the registry digest of a pulled image."""

    reference: str
    image_id: str
    kind: Literal["snapshot", "image", "build"]
    pulled: bool = False
    built: bool = False
    digest: str | None = None


class Environments:
    """Resolves environments on one engine. Owns its engine client: `aclose` it."""

    def __init__(
        self,
        engine: ImageEngine,
        catalog: Catalog,
        *,
        ca_bundle: bytes | None = None,
        max_bytes: int = 20 * 1024**3,
        timeout: float = 1800.0,
    ) -> None:
        self.engine = engine
        self.catalog = catalog
        self.ca_bundle = ca_bundle
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._bash: OrderedDict[str, bool] = OrderedDict()
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Environments:
        ca = settings.build_ca_bundle.read_bytes() if settings.build_ca_bundle else None
        return cls(
            ImageEngine.from_url(resolve_docker_host(settings.docker_host)),
            Catalog.from_settings(settings),
            ca_bundle=ca,
            max_bytes=settings.images_max_bytes,
            timeout=settings.environment_timeout_sec,
        )

    async def aclose(self) -> None:
        await self.engine.aclose()

    async def check(self, environment: Environment) -> CheckedEnvironment:
        """Refuse what can be refused now; decide the image the run will use."""
        check_environment(environment, self.catalog)
        async with self._engine_errors():
            snapshot = self._snapshot_of(environment)
            if snapshot is not None:
                await self._snapshot_info(snapshot)
                return CheckedEnvironment(environment, snapshot.image, snapshot=snapshot)
            if environment.kind == "build":
                base = await self._base_image(environment)
                context = self._context(environment, base)
                return CheckedEnvironment(environment, context.tag, build=context, base=base)
            assert environment.reference is not None  # check_environment made sure
            return CheckedEnvironment(environment, environment.reference)

    async def prepare(self, checked: CheckedEnvironment, *, progress: Progress) -> ResolvedImage:
        """Look up, pull or build the image ``checked`` names, reporting slow steps through
        ``progress``.

        Raises an `EnvironmentFailed` subclass saying what is wrong with the image, and
        `EnvironmentEngineUnavailable` when the engine fails. Gives up after the configured
        timeout.
        """
        try:
            with anyio.fail_after(self.timeout):
                async with self._engine_errors():
                    return await self._prepare(checked, progress)
        except TimeoutError:
            raise EnvironmentFailed(
                f"Preparing the environment took longer than {self.timeout:.0f} s.",
                code="environment_timeout",
            ) from None

    async def resolve(self, environment: Environment, *, progress: Progress) -> ResolvedImage:
        """`check`, then `prepare`: what `check` refuses is a 400 here too."""
        return await self.prepare(await self.check(environment), progress=progress)

    async def _prepare(self, checked: CheckedEnvironment, progress: Progress) -> ResolvedImage:
        if checked.snapshot is not None:
            info = await self._snapshot_info(checked.snapshot)
            await self._verify(checked.reference, info, pulled=False)
            return ResolvedImage(checked.reference, info["Id"], "snapshot")
        if checked.build is not None and checked.base is not None:
            if checked.environment.base_image is None:
                # Built on the default snapshot: still built (never pulled: it is ours).
                await self._base_image(checked.environment)
            return await self._build(checked.environment, checked.build, checked.base, progress)
        return await self._image(checked.reference, progress)

    async def build_snapshot(
        self,
        snapshot: Snapshot,
        *,
        progress: Progress,
        build_args: Mapping[str, str] | None = None,
    ) -> ResolvedImage:
        """Build ``snapshot`` from its Dockerfile (the CLI's ``snapshots build``)."""
        if snapshot.dockerfile is None:
            raise EnvironmentFailed(f"Snapshot '{snapshot.name}' has no Dockerfile to build.")
        dockerfile = Path(snapshot.dockerfile)
        files = await anyio.to_thread.run_sync(_directory_files, dockerfile)
        if files is None:
            raise EnvironmentFailed(
                f"Snapshot '{snapshot.name}': no Dockerfile at {dockerfile} (set snapshots_dir"
                " or the snapshot's dockerfile in the settings)."
            )
        if self.ca_bundle:
            files[CA_BUNDLE_NAME] = self.ca_bundle
        args = dict(snapshot.build_args)
        if snapshot.base_snapshot and "BASE_IMAGE" not in args:
            args["BASE_IMAGE"] = self.catalog.get(snapshot.base_snapshot).image
        args.update(build_args or {})
        # Checked right below, so that runs can trust the label and skip the check.
        labels = {
            cache.LABEL_ENVIRONMENT: "snapshot",
            LABEL_SNAPSHOT: snapshot.name,
            LABEL_BASH: "true",
        }
        async with self._engine_errors():
            image_id = await self.engine.build(
                context_archive(files),
                tag=snapshot.image,
                labels=labels,
                progress=progress,
                build_args=args,
                dockerfile=dockerfile.name,
            )
            if not await self.engine.runs_bash(image_id):
                await self.engine.remove(snapshot.image)
                raise NoBash(
                    f"Snapshot '{snapshot.name}' was built without a working bash, which the"
                    " agents need; the image was removed."
                )
        return ResolvedImage(snapshot.image, image_id, "snapshot", built=True)

    async def snapshot_image(self, snapshot: Snapshot) -> dict[str, Any] | None:
        """The engine's record of ``snapshot``'s image, or ``None`` when it is not built."""
        async with self._engine_errors():
            return await self.engine.inspect(snapshot.image)

    async def prune(self, max_bytes: int | None = None) -> list[cache.CachedImage]:
        """Remove cached builds and pulls, least recently used first, down to ``max_bytes``."""
        async with self._engine_errors():
            return await cache.prune(
                self.engine, self.max_bytes if max_bytes is None else max_bytes
            )

    def _snapshot_of(self, environment: Environment) -> Snapshot | None:
        if environment.kind == "snapshot":
            return self.catalog.get(environment.reference or "")
        if environment.kind == "default" and not environment.reference:
            assert self.catalog.default is not None  # check_environment made sure
            return self.catalog.get(self.catalog.default)
        return None

    async def _snapshot_info(self, snapshot: Snapshot) -> dict[str, Any]:
        info = await self.engine.inspect(snapshot.image)
        if info is None:
            raise SnapshotNotBuilt(
                snapshot.name, snapshot.image, buildable=snapshot.dockerfile is not None
            )
        return info

    async def _base_image(self, environment: Environment) -> str:
        if environment.base_image:
            return environment.base_image
        assert self.catalog.default is not None  # check_environment made sure
        snapshot = self.catalog.get(self.catalog.default)
        await self._snapshot_info(snapshot)
        return snapshot.image

    def _context(self, environment: Environment, base: str) -> BuildContext:
        spec = BuildSpec(base, environment.apt_packages, environment.pip_packages)
        return render(spec, ca_bundle=self.ca_bundle)

    async def _image(self, reference: str, progress: Progress) -> ResolvedImage:
        async with self._lock(reference):
            info = await self.engine.inspect(reference)
            marker = cache.pulled_marker(reference)
            if info is not None:
                self._check_platform(reference, info)
                if marker in (info.get("RepoTags") or []):
                    await cache.touch(self.engine, info["Id"], marker)
                await self._verify(reference, info, pulled=False)
                return ResolvedImage(reference, info["Id"], "image", digest=_digest(info))
            await progress(f"Image {reference} is not on the engine yet: pulling it.")
            await self.engine.pull(reference, progress)
            info = await self.engine.inspect(reference)
            if info is None:
                raise EnvironmentFailed(f"Image {reference} was pulled but cannot be found.")
            await self.engine.tag(info["Id"], marker)
            await self._verify(reference, info, pulled=True)
        await self._prune_after(info["Id"])
        return ResolvedImage(reference, info["Id"], "image", pulled=True, digest=_digest(info))

    async def _build(
        self, environment: Environment, context: BuildContext, base: str, progress: Progress
    ) -> ResolvedImage:
        async with self._lock(context.tag):
            info = await self.engine.inspect(context.tag)
            if info is not None:
                await cache.touch(self.engine, info["Id"], context.tag)
                await progress(
                    f"Reusing {context.tag}: built before from the same base and packages."
                )
                return ResolvedImage(context.tag, info["Id"], "build")
            await self._image(base, progress)
            await progress(_build_summary(context.tag, base, environment))
            labels = {
                cache.LABEL_ENVIRONMENT: "build",
                LABEL_DIGEST: context.digest,
                LABEL_BASH: "true",  # the base passed the check, and packages do not remove it
            }
            image_id = await self.engine.build(
                context.archive(), tag=context.tag, labels=labels, progress=progress
            )
            await progress(f"Built {context.tag}.")
        await self._prune_after(image_id)
        return ResolvedImage(context.tag, image_id, "build", built=True)

    def _check_platform(self, reference: str, info: dict[str, Any]) -> None:
        platform = (str(info.get("Os") or ""), str(info.get("Architecture") or ""))
        if platform != PLATFORM:
            variant = f"/{info['Variant']}" if info.get("Variant") else ""
            raise WrongPlatform(
                f"Image {reference} is built for {'/'.join(platform)}{variant}; runs need a"
                f" {'/'.join(PLATFORM)} image."
            )

    async def _verify(self, reference: str, info: dict[str, Any], *, pulled: bool) -> None:
        """Platform and bash; an image that fails either and was just pulled is removed."""
        try:
            self._check_platform(reference, info)
            if not await self._runs_bash(info):
                raise NoBash(
                    f"Image {reference} has no working bash (`bash -c true` failed in it); the"
                    " agents need bash on the PATH. Install it in the image."
                )
        except EnvironmentFailed:
            if pulled:
                await self.engine.remove(reference)
                await self.engine.remove(cache.pulled_marker(reference))
            raise

    async def _runs_bash(self, info: dict[str, Any]) -> bool:
        labels = (info.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_BASH) == "true" and cache.LABEL_ENVIRONMENT in labels:
            # Set by our own builds after checking. An image that fakes it only fails later.
            return True
        image_id: str = info["Id"]
        verdict = self._bash.get(image_id)
        if verdict is None:
            verdict = await self.engine.runs_bash(image_id)
            self._bash[image_id] = verdict
            while len(self._bash) > _VERDICTS_KEPT:
                self._bash.popitem(last=False)
        return verdict

    async def _prune_after(self, image_id: str) -> None:
        # The image just resolved is the newest, so it would go last anyway; keep it regardless.
        try:
            removed = await cache.prune(self.engine, self.max_bytes, keep=frozenset({image_id}))
        except SandboxError:
            logger.warning("could not prune the image cache", exc_info=True)
            return
        for image in removed:
            logger.info("pruned %s (%d bytes)", ", ".join(image.references), image.size)

    @asynccontextmanager
    async def _lock(self, key: str) -> AsyncIterator[None]:
        """Serialise work on one image, so two identical requests pull or build it once."""
        lock, users = self._locks.get(key, (anyio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    @asynccontextmanager
    async def _engine_errors(self) -> AsyncIterator[None]:
        try:
            yield
        except SandboxError as exc:
            raise EnvironmentEngineUnavailable(
                f"The sandbox engine failed while preparing the environment: {exc}"
            ) from exc


def _digest(info: dict[str, Any]) -> str | None:
    digests = info.get("RepoDigests") or []
    return str(digests[0]) if digests else None


def _build_summary(tag: str, base: str, environment: Environment) -> str:
    parts = [f"apt: {' '.join(environment.apt_packages)}"] if environment.apt_packages else []
    parts += [f"pip: {' '.join(environment.pip_packages)}"] if environment.pip_packages else []
    return f"Building {tag} on {base} ({'; '.join(parts) or 'no packages'})."


def _directory_files(dockerfile: Path) -> dict[str, bytes] | None:
    """The files of ``dockerfile``'s directory (its build context), or None without it."""
    if not dockerfile.is_file():
        return None
    directory = dockerfile.parent
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }
