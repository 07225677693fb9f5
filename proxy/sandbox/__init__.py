"""Sandbox backends behind one small protocol (see `proxy.sandbox.base`).

- `DockerBackend`: a container per run, over the Docker Engine API.
- `LocalBackend`: a process per run in a per-run directory (bubblewrap when available).
- `open_backend`: open the one the settings name ("auto", "docker", "local" or
  "kubernetes"); each backend is registered by one line of `proxy.sandbox.selection.BACKENDS`
  (the Kubernetes one, `proxy.sandbox.kubernetes`, is imported only when chosen).
- `ScriptedBackend`: plays scripted sandboxes in memory, for tests of code that runs them.
"""

from proxy.sandbox.base import (
    AgentTools,
    Capabilities,
    CopiedFile,
    CopyReport,
    EngineUnavailable,
    ExitStatus,
    FileContent,
    ImageNotFound,
    Isolation,
    Mount,
    Orphans,
    Sandbox,
    SandboxBackend,
    SandboxError,
    SandboxLimitError,
    SandboxRelay,
    SandboxSpec,
    SandboxStateError,
    ServesSandboxes,
    SkippedFile,
    SkipReason,
    UnsafePathError,
)
from proxy.sandbox.docker import DockerBackend, DockerSandbox
from proxy.sandbox.local import LocalBackend, LocalSandbox
from proxy.sandbox.scripted import Pause, Script, ScriptedBackend, ScriptedSandbox
from proxy.sandbox.selection import open_backend

__all__ = [
    "AgentTools",
    "Capabilities",
    "CopiedFile",
    "CopyReport",
    "DockerBackend",
    "DockerSandbox",
    "EngineUnavailable",
    "ExitStatus",
    "FileContent",
    "ImageNotFound",
    "Isolation",
    "LocalBackend",
    "LocalSandbox",
    "Mount",
    "Orphans",
    "Pause",
    "Sandbox",
    "SandboxBackend",
    "SandboxError",
    "SandboxLimitError",
    "SandboxRelay",
    "SandboxSpec",
    "SandboxStateError",
    "Script",
    "ScriptedBackend",
    "ScriptedSandbox",
    "ServesSandboxes",
    "SkipReason",
    "SkippedFile",
    "StreamedFile",
    "UnsafePathError",
    "open_backend",
]
