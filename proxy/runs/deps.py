"""What runs depend on, as one public, immutable value wired once in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from proxy.agents.install import AgentCache
from proxy.environments import Environments
from proxy.jetty import PlanDefaults
from proxy.links import LinkSigner
from proxy.prices import PriceBook
from proxy.quota import Quotas
from proxy.relay.tokens import RunTokens
from proxy.runs.followup import KeptSandboxes
from proxy.runs.launch import EngineConfig
from proxy.sandbox import SandboxBackend
from proxy.settings import Settings
from proxy.store import Store
from proxy.store.blobs import BlobStore

if TYPE_CHECKING:  # the pools plan their environments with the checks, which take RunDeps
    from proxy.runs.pools import WarmPools

__all__ = ["RunDeps"]


@dataclass(frozen=True)
class RunDeps:
    """The parts the checks, the engine and each run's lifecycle use (`proxy.runs.runtime`
    makes them).

    ``environments`` is the image engine, there when the backend builds images (see
    `proxy.sandbox.Capabilities`); ``kept`` holds the sandboxes of finished runs waiting for
    their conversation's next turn; ``http`` fetches ``jetty.runbook_url``; ``settings`` give
    each run's model provider (`proxy.runs.credentials`); ``links`` sign the links in its answer;
    ``pools`` hold the sandboxes started ahead of their runs (where the backend can).
    """

    store: Store
    blobs: BlobStore
    tokens: RunTokens
    backend: SandboxBackend
    agents: AgentCache
    config: EngineConfig
    kept: KeptSandboxes
    defaults: PlanDefaults
    settings: Settings
    http: httpx.AsyncClient
    # Signs the links a run puts in its answer (result files, zip, its page).
    links: LinkSigner
    # What each model call costs, and the limits runs and their spend count against.
    prices: PriceBook
    quotas: Quotas
    environments: Environments | None = None
    pools: WarmPools | None = None
