"""What a route handler gets from the app: its services and who is calling."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request

from proxy.api.recording import ChatRecorder
from proxy.auth import Authenticator, Principal
from proxy.metrics import Metrics
from proxy.relay.upstream import Upstreams
from proxy.runs.runtime import RunService
from proxy.settings import Settings
from proxy.store import Store
from proxy.store.blobs import BlobStore


@dataclass
class Services:
    """Everything built in the lifespan, handed to routes through ``request.state``."""

    settings: Settings
    store: Store
    authenticator: Authenticator
    upstreams: Upstreams
    metrics: Metrics
    blobs: BlobStore
    runs: RunService | None = None
    recorder: ChatRecorder = field(default_factory=ChatRecorder)


def services_of(request: Request) -> Services:
    services = request.state.services
    assert isinstance(services, Services)
    return services


async def authenticate(request: Request) -> Principal:
    """The caller's principal; raises 401 when a key is required and missing or wrong."""
    return await services_of(request).authenticator.authenticate(request.headers)
