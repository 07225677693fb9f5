"""An httpx transport that connects only where :class:`AddressPolicy` allows.

Every request, redirects included (httpx sends each hop through the transport), is checked
where it connects: the host is resolved here, every address it has is judged, and the
connection goes to an address that was judged, never to a second lookup's answer (a name
that changes its answer between the check and the connection, "DNS rebinding", gains
nothing). The URL's host still names the server: in the ``Host`` header and, for https, in
TLS (server name indication and certificate check)::

    async with httpx.AsyncClient(transport=GuardedTransport(policy), trust_env=False) as client:
        response = await client.get(url)          # AddressRefused for an internal address

Connections are pooled per host name, so a TLS connection made to one name is never reused
for another that happens to share its address. No HTTP proxy is used: a proxy would make
the connection instead, out of the policy's sight.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

import anyio
import httpx

from proxy.egress.addresses import AddressPolicy, IPAddress

__all__ = ["AddressRefused", "GuardedTransport", "Resolver", "resolve"]

logger = logging.getLogger("proxy.egress")

Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]

# Past this many hosts, the pool of the one used least recently is closed.
_MAX_HOSTS = 256


class AddressRefused(httpx.ConnectError):
    """The URL's host is, or resolves to, an address the policy refuses.

    A :class:`httpx.ConnectError`, so that callers treat it as a host that cannot be reached.
    """


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, in the resolver's order, without repeats."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: dict[IPAddress, None] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        found.setdefault(ipaddress.ip_address(sockaddr[0]), None)
    return list(found)


class GuardedTransport(httpx.AsyncBaseTransport):
    """Resolves, checks and pins each request's host; see the module docstring.

    ``resolver`` replaces DNS (tests); ``verify`` is passed to the pools it makes.
    """

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        resolver: Resolver = resolve,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._policy = policy
        self._resolve = resolver
        self._ssl = httpx.create_ssl_context(verify=verify) if verify is not False else verify
        self._pools: OrderedDict[tuple[str, str, int], httpx.AsyncHTTPTransport] = OrderedDict()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise AddressRefused(f"scheme {url.scheme!r} is not allowed", request=request)
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = await self._resolve(host, port)
        except (OSError, ValueError) as exc:
            raise httpx.ConnectError(
                f"{host} could not be resolved: {exc}", request=request
            ) from exc
        refusal = self._policy.refusal(host, addresses)
        if refusal is not None:
            raise AddressRefused(refusal, request=request)
        pool = await self._pool(url.scheme, host, port)
        extensions = dict(request.extensions)
        if url.scheme == "https":
            extensions["sni_hostname"] = host
        failure: httpx.ConnectError | None = None
        for address in addresses:
            pinned = httpx.Request(
                request.method,
                url.copy_with(host=str(address)),
                headers=request.headers,  # Host: still the URL's own
                stream=request.stream,
                extensions=extensions,
            )
            try:
                return await pool.handle_async_request(pinned)
            except httpx.ConnectError as exc:  # the next address may answer
                failure = exc
        assert failure is not None
        raise failure

    async def _pool(self, scheme: str, host: str, port: int) -> httpx.AsyncHTTPTransport:
        key = (scheme, host.lower(), port)
        pool = self._pools.get(key)
        if pool is None:
            pool = httpx.AsyncHTTPTransport(verify=self._ssl, trust_env=False)
            self._pools[key] = pool
            if len(self._pools) > _MAX_HOSTS:
                _, oldest = self._pools.popitem(last=False)
                await oldest.aclose()
        else:
            self._pools.move_to_end(key)
        return pool

    async def aclose(self) -> None:
        pools = list(self._pools.values())
        self._pools.clear()
        for pool in pools:
            await pool.aclose()
