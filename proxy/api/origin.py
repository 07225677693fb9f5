"""Where clients reach this server: the origin that links in answers are built on.

``public_base_url`` wins when it is set: the one answer that is right for every client (a
chat UI in Docker reaches the server as ``host.docker.internal:8000``, and a link built on
that cannot be opened by the browser on the host). Otherwise the request's own scheme and
``Host``. Behind a reverse proxy, ``Forwarded: proto=…;host=…`` (RFC 7239; the first element,
added by the proxy the client talked to) or else ``X-Forwarded-Proto``/``X-Forwarded-Host``
say what the client used; they are believed only when the connection comes from an address
in ``forwarded_allow_ips``, since anyone else could send them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from starlette.requests import HTTPConnection

_HOST = re.compile(r"^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")
_PROTOS = frozenset({"http", "https"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDR ranges; raises ValueError for anything else."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


class Origins:
    """Computes a request's public origin (``scheme://host[:port]``, no trailing slash)."""

    def __init__(self, public_base_url: str | None, forwarded_allow_ips: Iterable[str] = ()):
        self._public = public_base_url.rstrip("/") if public_base_url else None
        self._trusted = parse_networks(forwarded_allow_ips)

    def of(self, request: HTTPConnection) -> str:
        if self._public:
            return self._public
        if self._trusts(request):
            forwarded = _forwarded(request)
            if forwarded is not None:
                return forwarded
        return str(request.base_url).rstrip("/")

    def _trusts(self, request: HTTPConnection) -> bool:
        if not self._trusted or request.client is None:
            return False
        try:
            peer = ipaddress.ip_address(request.client.host)
        except ValueError:
            return False
        return any(peer in network for network in self._trusted)


def _forwarded(request: HTTPConnection) -> str | None:
    """The origin the forwarding headers describe, or None when they are absent or malformed."""
    proto = host = None
    header = request.headers.get("forwarded")
    if header:
        first = header.split(",", 1)[0]
        for pair in first.split(";"):
            name, _, value = pair.strip().partition("=")
            value = value.strip().strip('"')
            if name.lower() == "proto":
                proto = value.lower()
            elif name.lower() == "host":
                host = value
    else:
        proto = _first(request.headers.get("x-forwarded-proto"))
        proto = proto.lower() if proto else None
        host = _first(request.headers.get("x-forwarded-host"))
    if proto is None and host is None:
        return None
    proto = proto or request.url.scheme
    host = host or request.headers.get("host", "")
    if proto not in _PROTOS or not _HOST.match(host):
        return None
    root = request.scope.get("root_path", "").rstrip("/")
    return f"{proto}://{host}{root}"


def _first(value: str | None) -> str | None:
    if not value:
        return None
    return value.split(",", 1)[0].strip() or None
