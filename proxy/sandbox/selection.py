"""Pick a sandbox backend at startup, by name, from a table.

A backend is registered by one line of `BACKENDS`: its name (the ``backend`` setting) and
where its opener is, as ``"module:attr"``. The module is imported only when the backend is
chosen, so a backend's own dependencies stay optional. An opener is::

    async def open_it(settings: Settings, owner: str | None) -> SandboxBackend

and raises `EngineUnavailable` when its engine does not answer. ``owner`` names this
installation (see `proxy.runs.runtime.sandbox_owner`). "auto" opens the first of `AUTO` that
answers.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from proxy.sandbox.base import EngineUnavailable, SandboxBackend

if TYPE_CHECKING:
    from proxy.settings import Settings

__all__ = ["AUTO", "BACKENDS", "Opener", "backend_names", "check_backend_name", "open_backend"]

logger = logging.getLogger(__name__)

Opener = Callable[["Settings", "str | None"], Awaitable[SandboxBackend]]

#: Every sandbox backend, by the name the ``backend`` setting uses.
BACKENDS: Mapping[str, str] = MappingProxyType(
    {
        "docker": "proxy.sandbox.docker:open_docker",
        "local": "proxy.sandbox.local:open_local",
        "kubernetes": "proxy.sandbox.kubernetes:open_kubernetes",
    }
)
#: What "auto" tries, in order.
AUTO = ("docker", "local")


def backend_names() -> tuple[str, ...]:
    """The values of the ``backend`` setting."""
    return ("auto", *BACKENDS)


def check_backend_name(name: str) -> str:
    """``name`` if it is a value of the ``backend`` setting, else a `ValueError` saying which
    are."""
    if name not in backend_names():
        raise ValueError(f"unknown sandbox backend {name!r}: use {', '.join(backend_names())}")
    return name


def opener(name: str) -> Opener:
    """The opener of backend ``name``, imported now; `ValueError` for an unknown name."""
    if name not in BACKENDS:
        raise ValueError(f"no sandbox backend is called {name!r}; known: {', '.join(BACKENDS)}")
    module, _, attr = BACKENDS[name].partition(":")
    found: Opener = getattr(importlib.import_module(module), attr)
    return found


async def open_backend(settings: Settings, *, owner: str | None = None) -> SandboxBackend:
    """The backend ``settings.backend`` names: "docker" requires an engine that answers
    (else `EngineUnavailable`); "auto" falls back from one to the next of `AUTO`. The caller
    owns the result and must ``aclose()`` it."""
    if settings.backend != "auto":
        return await opener(settings.backend)(settings, owner)
    for name in AUTO[:-1]:
        try:
            return await opener(name)(settings, owner)
        except EngineUnavailable as exc:
            logger.info("%s; trying the next sandbox backend", exc)
    return await opener(AUTO[-1])(settings, owner)
