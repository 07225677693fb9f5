"""The images this server made or fetched, and pruning them when they take too much room.

Two kinds are cached, and only these are ever removed:

* package builds, which carry the label ``jetty-proxy.environment=build``;
* images pulled for a run, which get a second reference ``jetty-env/pulled:<hash>`` (a hash
  of the pulled reference) since a pulled image cannot be labelled. An image that was on the
  engine before a run asked for it is never marked, so never pruned.

Snapshots are not cached in this sense: an operator builds them, and removes them.

"Unused for longest" needs a last-use time that survives restarts. The engine keeps one per
image, ``Metadata.LastTagTime``, and updates it whenever a reference is (re)applied, so using
a cached image re-tags it (`touch`). Sizes are the engine's per-image sizes, so layers shared
between images count once per image: the limit errs on the side of pruning.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from proxy.environments.dockerfile import BUILD_REPOSITORY
from proxy.environments.engine import ImageEngine

__all__ = [
    "LABEL_ENVIRONMENT",
    "PULLED_REPOSITORY",
    "CachedImage",
    "cached_images",
    "last_used",
    "prune",
    "pulled_marker",
    "touch",
]

LABEL_ENVIRONMENT = "jetty-proxy.environment"
PULLED_REPOSITORY = "jetty-env/pulled"
_NEVER = datetime.min.replace(tzinfo=UTC)
_FRACTION = re.compile(r"\.(\d+)")


@dataclass(frozen=True, slots=True)
class CachedImage:
    """One prunable image: the references pruning removes (ours only), its size, last use."""

    image_id: str
    kind: Literal["build", "pulled"]
    references: tuple[str, ...]
    size: int
    last_used: datetime


def pulled_marker(reference: str) -> str:
    """The reference that marks ``reference`` as pulled by this server."""
    return f"{PULLED_REPOSITORY}:{hashlib.sha256(reference.encode()).hexdigest()[:16]}"


async def touch(engine: ImageEngine, image_id: str, reference: str) -> None:
    """Record a use of a cached image by re-applying one of its references."""
    await engine.tag(image_id, reference)


def last_used(info: dict[str, Any]) -> datetime:
    """When the image was last tagged (the engine's note of our last use), else created."""
    for value in ((info.get("Metadata") or {}).get("LastTagTime"), info.get("Created")):
        parsed = _timestamp(value)
        if parsed is not None and parsed.year > 1:
            return parsed
    return _NEVER


async def cached_images(engine: ImageEngine) -> list[CachedImage]:
    """Every prunable image, least recently used first."""
    found: list[CachedImage] = []
    builds = await engine.images({"label": [f"{LABEL_ENVIRONMENT}=build"]})
    pulled = await engine.images({"reference": [PULLED_REPOSITORY]})
    seen: set[str] = set()
    for kind, summaries in (("build", builds), ("pulled", pulled)):
        for summary in summaries:
            image_id = summary["Id"]
            info = await engine.inspect(image_id)
            if info is None or image_id in seen:
                continue
            seen.add(image_id)
            tags: list[str] = info.get("RepoTags") or []
            if kind == "build":
                references = tuple(t for t in tags if t.startswith(f"{BUILD_REPOSITORY}:"))
            else:
                markers = [t for t in tags if t.startswith(f"{PULLED_REPOSITORY}:")]
                originals = [t for t in tags if pulled_marker(t) in markers]
                # The marker goes last: while it stays, a half-removed image is still ours.
                references = (*originals, *markers)
            found.append(
                CachedImage(
                    image_id=image_id,
                    kind="build" if kind == "build" else "pulled",
                    references=references,
                    size=int(summary.get("Size") or 0),
                    last_used=last_used(info),
                )
            )
    return sorted(found, key=lambda image: image.last_used)


async def prune(
    engine: ImageEngine, max_bytes: int, *, keep: frozenset[str] = frozenset()
) -> list[CachedImage]:
    """Remove cached images, least recently used first, until they total at most ``max_bytes``.

    Images in ``keep`` (ids) and images a container still uses are skipped. Returns what was
    removed.
    """
    images = await cached_images(engine)
    total = sum(image.size for image in images)
    removed: list[CachedImage] = []
    for image in images:
        if total <= max_bytes:
            break
        if image.image_id in keep:
            continue
        for reference in image.references:
            await engine.remove(reference)
        if await engine.inspect(image.image_id) is None:
            total -= image.size
            removed.append(image)
    return removed


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    # The engine writes nanoseconds; fromisoformat takes at most microseconds.
    text = _FRACTION.sub(lambda match: "." + match[1][:6], value.replace("Z", "+00:00"), count=1)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
