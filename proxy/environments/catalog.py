"""The snapshot catalog: named, pre-built environments, from the built-ins and the settings.

The project ships two, as Dockerfiles under ``deploy/snapshots/``::

    python312-uv       Python 3.12 and uv
    prism-playwright   python312-uv plus Playwright for Python, driving Debian's Chromium

A ``[snapshots.NAME]`` table in the settings adds a snapshot or changes a built-in one (see
`proxy.settings.SnapshotSettings`). The catalog is checked when it is made, so a bad entry
stops the server at start-up rather than failing a request. `check_environment` is the cheap,
synchronous half of resolving an environment: what it refuses is a 400 before any run starts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from proxy.environments.dockerfile import check_packages
from proxy.environments.errors import UnknownSnapshot
from proxy.errors import InvalidField
from proxy.jetty.imageref import InvalidImageRef, parse_image_ref
from proxy.jetty.plan import Environment
from proxy.settings import Settings

__all__ = ["BUILTIN_SNAPSHOTS", "Catalog", "Snapshot", "check_environment", "default_snapshots_dir"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A named environment: the image it is, and how to build that image.

    ``dockerfile`` is ``None`` for a snapshot that is only an image reference (built or
    loaded some other way). ``base_snapshot`` is built first and passed as ``BASE_IMAGE``.
    ``warm``: sandboxes of it kept started for its runs (`proxy.runs.pools`).
    """

    name: str
    image: str
    description: str = ""
    includes: tuple[str, ...] = ()
    dockerfile: Path | None = None
    build_args: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    base_snapshot: str | None = None
    warm: int = 0


def default_snapshots_dir() -> Path:
    """The project's ``deploy/snapshots`` (present in a source checkout)."""
    return Path(__file__).resolve().parents[2] / "deploy" / "snapshots"


def _builtins(directory: Path) -> tuple[Snapshot, ...]:
    return (
        Snapshot(
            name="python312-uv",
            image="jetty-env/python312-uv:latest",
            description="Python 3.12 with pip and uv, bash, on Debian 12.",
            includes=("python3.12", "pip", "uv", "bash", "ca-certificates"),
            dockerfile=directory / "python312-uv" / "Dockerfile",
        ),
        Snapshot(
            name="prism-playwright",
            image="jetty-env/prism-playwright:latest",
            description="python312-uv plus Playwright for Python, driving Debian's Chromium"
            " (launch it with executable_path=/usr/bin/chromium).",
            includes=("python312-uv", "playwright", "chromium"),
            dockerfile=directory / "prism-playwright" / "Dockerfile",
            base_snapshot="python312-uv",
        ),
    )


BUILTIN_SNAPSHOTS = tuple(snapshot.name for snapshot in _builtins(Path()))


class Catalog:
    """The snapshots this server knows, in a stable order (built-ins first)."""

    def __init__(self, snapshots: tuple[Snapshot, ...], default: str | None = None) -> None:
        self._snapshots = {snapshot.name: snapshot for snapshot in snapshots}
        self.default = default
        for snapshot in snapshots:
            _check_snapshot(snapshot, self._snapshots)
        if default is not None and default not in self._snapshots:
            raise ValueError(f"default snapshot {default!r} is not in the catalog: {self.names}")

    @classmethod
    def from_settings(cls, settings: Settings) -> Catalog:
        """The built-ins, changed and extended by ``settings.snapshots``."""
        directory = settings.snapshots_dir or default_snapshots_dir()
        snapshots = {snapshot.name: snapshot for snapshot in _builtins(directory)}
        for name, entry in settings.snapshots.items():
            given = entry.model_dump(exclude_unset=True, exclude_none=True)
            if name in snapshots:
                base = snapshots[name]
            elif "image" in given:
                base = Snapshot(name=name, image=given["image"])
            else:
                raise ValueError(f"snapshot {name!r} needs an image reference")
            if "includes" in given:
                given["includes"] = tuple(given["includes"])
            if "build_args" in given:
                given["build_args"] = MappingProxyType(dict(given["build_args"]))
            snapshots[name] = replace(base, **given)
        return cls(tuple(snapshots.values()), settings.effective_default_snapshot)

    @property
    def names(self) -> list[str]:
        return list(self._snapshots)

    def __iter__(self) -> Iterator[Snapshot]:
        return iter(self._snapshots.values())

    def __contains__(self, name: object) -> bool:
        return name in self._snapshots

    def get(self, name: str) -> Snapshot:
        """The snapshot called ``name``; an unknown name is a 400 listing the known ones."""
        try:
            return self._snapshots[name]
        except KeyError:
            raise UnknownSnapshot(name, self.names) from None

    def build_order(self, names: list[str]) -> list[Snapshot]:
        """``names`` (all when empty) with each one's base snapshots before it."""
        ordered: list[Snapshot] = []
        for name in names or self.names:
            chain: list[Snapshot] = []
            snapshot: Snapshot | None = self.get(name)
            while snapshot is not None and snapshot not in ordered and snapshot not in chain:
                chain.append(snapshot)
                snapshot = self.get(snapshot.base_snapshot) if snapshot.base_snapshot else None
            ordered += reversed(chain)
        return ordered


def check_environment(environment: Environment, catalog: Catalog) -> None:
    """Refuse, with a 400, what no engine call could fix.

    An unknown snapshot, a malformed image reference, a package outside its registry's
    grammar, or no environment at all. Cheap and synchronous: call it before a run starts.
    """
    if environment.kind == "snapshot":
        catalog.get(environment.reference or "")
    elif environment.kind == "build":
        check_packages(environment.apt_packages, environment.pip_packages)
        if environment.base_image is not None:
            _check_reference(environment.base_image, "jetty.base_image")
        elif catalog.default is None:
            raise InvalidField(
                "jetty.base_image",
                "Name a base_image for the packages: this server has no default environment.",
            )
    elif environment.reference:
        _check_reference(environment.reference, "jetty.image")
    elif catalog.default is None:
        raise InvalidField(
            "jetty.image",
            "No environment: give jetty.snapshot or jetty.image, or configure a default"
            " snapshot or image on the server.",
        )


def _check_reference(reference: str, param: str) -> None:
    try:
        parse_image_ref(reference)
    except InvalidImageRef as exc:
        raise InvalidField(param, f"Invalid image reference '{reference}': {exc}") from exc


def _check_snapshot(snapshot: Snapshot, known: Mapping[str, Snapshot]) -> None:
    try:
        parse_image_ref(snapshot.image)
    except InvalidImageRef as exc:
        raise ValueError(
            f"snapshot {snapshot.name!r}: bad image {snapshot.image!r}: {exc}"
        ) from exc
    if snapshot.base_snapshot is not None and snapshot.base_snapshot not in known:
        raise ValueError(
            f"snapshot {snapshot.name!r} is based on unknown snapshot {snapshot.base_snapshot!r}"
        )
