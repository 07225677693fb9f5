"""Why a run is refused before anything of it exists: the run area's own errors.

Each is a :class:`~proxy.errors.ProxyError`, raised by the checks (`proxy.runs.checks`) and
rendered by the HTTP edge like any other::

    ProxyError
    ├── AgentUnavailable         503 agent_unavailable: the agent CLI cannot be made ready
    ├── SandboxUnavailable       503 sandbox_unavailable: the sandbox engine does not answer
    ├── Conflict
    │   └── RunInProgress        409 run_in_progress: the run a turn continues is still live
    └── BadRequest
        └── ProviderNotConfigured  400 model_provider_not_configured

The other refusals are the generic ones (`proxy.errors`: a field, a missing file) and those of
the environments (`proxy.environments.errors`). Once a run has started, what goes wrong is told
in-band, as a failed run with a ``code``, never as an exception.
"""

from __future__ import annotations

from proxy.errors import BadRequest, Conflict, ProxyError
from proxy.sandbox import SandboxError

__all__ = ["AgentUnavailable", "ProviderNotConfigured", "RunInProgress", "SandboxUnavailable"]


class AgentUnavailable(ProxyError):
    status_code = 503
    error_type = "server_error"
    code = "agent_unavailable"


class SandboxUnavailable(ProxyError):
    """The sandbox engine cannot be reached, or failed: `from_error` maps a `SandboxError`."""

    status_code = 503
    error_type = "server_error"
    code = "sandbox_unavailable"

    @classmethod
    def from_error(cls, error: SandboxError) -> SandboxUnavailable:
        return cls(f"The sandbox engine is unavailable: {error}")


class RunInProgress(Conflict):
    code = "run_in_progress"


class ProviderNotConfigured(BadRequest):
    """The run's model provider has no base URL or key, neither on the server nor in the
    collection: refused before anything starts."""

    code = "model_provider_not_configured"
