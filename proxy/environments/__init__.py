"""Where runs happen: snapshots, custom images and package builds, as images on the engine.

A run's `~proxy.jetty.plan.Environment` says what was asked for; this package turns it into
an image the sandbox backend can start::

    catalog.py     the named snapshots (built-ins + settings) and the cheap 400 checks
    dockerfile.py  the generated Dockerfile of a package build, and its content hash (pure)
    progress.py    the engine's pull/build messages summarised into readable lines (pure)
    engine.py      pull, build and the bash check over the Docker Engine API
    cache.py       what we pulled or built, and pruning it, least recently used first
    resolve.py     `Environments`: check before a run, prepare during it
    errors.py      what can go wrong, each with its HTTP status and code
"""

from proxy.environments.catalog import Catalog, Snapshot, check_environment
from proxy.environments.errors import (
    BuildFailed,
    EnvironmentEngineUnavailable,
    EnvironmentFailed,
    ImageNotFound,
    ImageNotPublic,
    NoBash,
    RegistryUnreachable,
    SnapshotNotBuilt,
    UnknownSnapshot,
    WrongPlatform,
)
from proxy.environments.resolve import CheckedEnvironment, Environments, ResolvedImage

__all__ = [
    "BuildFailed",
    "Catalog",
    "CheckedEnvironment",
    "EnvironmentEngineUnavailable",
    "EnvironmentFailed",
    "Environments",
    "ImageNotFound",
    "ImageNotPublic",
    "NoBash",
    "RegistryUnreachable",
    "ResolvedImage",
    "Snapshot",
    "SnapshotNotBuilt",
    "UnknownSnapshot",
    "WrongPlatform",
    "check_environment",
]
