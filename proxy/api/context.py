"""What a route handler gets from the app: its services and who is calling."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from proxy.api.origin import Origins
from proxy.api.recording import ChatRecorder
from proxy.auth import Authenticator, Principal
from proxy.links import LinkSigner
from proxy.metrics import Metrics
from proxy.prices import PriceBook
from proxy.quota import Quotas
from proxy.relay.upstream import Upstreams
from proxy.runs.service import Runs
from proxy.settings import Settings
from proxy.store import Store
from proxy.store.blobs import BlobStore
from proxy.store.chat import ChatRecord


@dataclass
class Services:
    """Everything built in the lifespan, handed to routes through ``request.state``."""

    settings: Settings
    store: Store
    authenticator: Authenticator
    upstreams: Upstreams
    metrics: Metrics
    blobs: BlobStore
    recorder: ChatRecorder[ChatRecord]
    # Signed run links, and the origin clients reach this server at (for links).
    links: LinkSigner
    origins: Origins
    # What model calls cost, and the limits requests and runs are checked against.
    prices: PriceBook
    quotas: Quotas
    runs: Runs | None = None


def services_of(request: Request) -> Services:
    # Straight from the lifespan state in the scope: request.state wraps it in an object.
    services = request.scope["state"]["services"]
    assert isinstance(services, Services)
    return services


async def authenticate(request: Request) -> Principal:
    """The caller's principal; raises 401 when a key is required and missing or wrong, 403
    for a web page's request to a server without keys."""
    return await services_of(request).authenticator.authenticate(request.headers, request.method)
