"""What the server lets a run ask for, beyond what the request grammar allows.

Decided before anything is created, so that a refusal leaves no trace. :func:`check_resources`
and :func:`check_image_registry` (400s naming the field) run inside ``resolve_plan``;
``network_enabled: true`` is allowed or denied by the server (``network_policy``) and, over
that, by the run's collection (``[collections.NAME] network``), once the collection is known::

    plan = resolve_plan(...)
    defaults.network_policy.check(plan.network_enabled, collection)   # NetworkDenied (403)
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from proxy.errors import Forbidden, InvalidField
from proxy.jetty.imageref import InvalidImageRef, check_registry, parse_image_ref

__all__ = [
    "NetworkAccess",
    "NetworkDenied",
    "NetworkPolicy",
    "check_image_registry",
    "check_resources",
]

NetworkAccess = Literal["allowed", "denied"]


class NetworkDenied(Forbidden):
    """The run asks for network access that its collection may not have."""

    code = "network_not_allowed"


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """Whether runs may have network access: the server's rule, and each collection's.

    ``collections`` maps a collection to its own rule, which replaces ``default`` for it.
    """

    default: NetworkAccess = "denied"
    collections: Mapping[str, NetworkAccess] = field(default_factory=lambda: MappingProxyType({}))

    def access(self, collection: str) -> NetworkAccess:
        """The rule for ``collection``."""
        return self.collections.get(collection, self.default)

    def check(self, network_enabled: bool, collection: str) -> None:
        """Raise :class:`NetworkDenied` when a run of ``collection`` asks for a network it
        may not have."""
        if not network_enabled or self.access(collection) == "allowed":
            return
        where = (
            f"collection '{collection}'"
            if collection in self.collections
            else f"this server (collection '{collection}' has no rule of its own)"
        )
        raise NetworkDenied(
            f"Network access (network_enabled: true) is denied for runs of {where}. Run"
            ' without it, or ask the operator to allow it: network_policy = "allowed", or'
            f' network = "allowed" in the [collections.{collection}] table of the config.',
            param="jetty.network_enabled",
        )


def check_resources(
    cpus: float | None,
    memory_bytes: int | None,
    *,
    cpus_max: float | None,
    memory_max_bytes: int | None,
    cpus_param: str,
    memory_param: str,
) -> None:
    """400 naming the field for CPUs or memory over the server's maximum (``None``: none)."""
    if cpus is not None and cpus_max is not None and cpus > cpus_max:
        raise InvalidField(
            cpus_param, f"cpus {cpus:g} is over this server's maximum of {cpus_max:g}"
        )
    limit = memory_max_bytes
    if memory_bytes is not None and limit is not None and memory_bytes > limit:
        raise InvalidField(
            memory_param,
            f"memory {_size(memory_bytes)} is over this server's maximum of {_size(limit)}",
        )


def check_image_registry(image: str | None, allowed: Collection[str], *, param: str) -> None:
    """400 naming ``param`` for an image from a registry not in ``allowed`` (empty: any)."""
    if image is None or not allowed:
        return
    try:
        check_registry(parse_image_ref(image), allowed)
    except InvalidImageRef as exc:
        raise InvalidField(param, f"Image {image!r} cannot be used: {exc}") from exc


def _size(value: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= factor:
            return f"{value / factor:g} {unit}"
    return f"{value} bytes"
