"""Sandbox backends behind one small protocol (see `proxy.sandbox.base`).

- `DockerBackend`: a container per run, over the Docker Engine API.
- `LocalBackend`: a process per run in a per-run directory (bubblewrap when available).
- `select_backend`: choose one at startup ("auto", "docker" or "local").
"""

from proxy.sandbox.base import (
    CopiedFile,
    CopyReport,
    EngineUnavailable,
    ExitStatus,
    FileContent,
    ImageNotFound,
    Mount,
    Orphans,
    Sandbox,
    SandboxBackend,
    SandboxError,
    SandboxLimitError,
    SandboxSpec,
    SandboxStateError,
    SkippedFile,
    SkipReason,
    UnsafePathError,
)
from proxy.sandbox.docker import DockerBackend, DockerSandbox
from proxy.sandbox.local import LocalBackend, LocalSandbox
from proxy.sandbox.selection import select_backend

__all__ = [
    "CopiedFile",
    "CopyReport",
    "DockerBackend",
    "DockerSandbox",
    "EngineUnavailable",
    "ExitStatus",
    "FileContent",
    "ImageNotFound",
    "LocalBackend",
    "LocalSandbox",
    "Mount",
    "Orphans",
    "Sandbox",
    "SandboxBackend",
    "SandboxError",
    "SandboxLimitError",
    "SandboxSpec",
    "SandboxStateError",
    "SkipReason",
    "SkippedFile",
    "StreamedFile",
    "UnsafePathError",
    "select_backend",
]
