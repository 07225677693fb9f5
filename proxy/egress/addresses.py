"""Which network addresses a request made on a client's behalf may reach.

A URL a client gives (``jetty.runbook_url``, a collection's provider base URL) must not turn the
server into a way into the networks only it can reach. Refused, whatever the spelling of the
host (``localhost``, ``2130706433``, ``0x7f.1``, ``[::ffff:127.0.0.1]``)::

    IPv4   0.0.0.0/8 this network     10/8, 172.16/12, 192.168/16 private   100.64/10 shared
           127/8 loopback             169.254/16 link-local (cloud metadata)
           192.0.0/24, 192.0.2/24, 198.51.100/24, 203.0.113/24, 198.18/15, 192.88.99/24
           special purpose            224/4 multicast      240/4 reserved, broadcast
    IPv6   ::, ::1, ::/96 IPv4-compatible   fc00::/7 unique local   fe80::/10 link-local
           fec0::/10 site-local      ff00::/8 multicast     64:ff9b:1::/48 local NAT64
           2001::/23 (Teredo tunnels, other protocol assignments)   2001:db8::/32, 3fff::/20
           documentation   100::/64 discard   5f00::/16 SRv6   anything outside 2000::/3
    IPv4 embedded in IPv6 is judged as IPv4: ::ffff:a.b.c.d (mapped), 64:ff9b::a.b.c.d (NAT64),
    2002:AABB:CCDD:: (6to4).

:class:`AddressPolicy` adds the operator's exceptions (``fetch_allow_hosts``): host names
(``runbooks.corp``, ``*.corp.example``) whose addresses are all allowed, and addresses or
networks (``127.0.0.1``, ``10.20.0.0/16``) allowed wherever a name leads.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["AddressPolicy", "IPAddress", "forbidden_reason"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _table(*rows: tuple[str, str]) -> tuple[tuple[_Network, str], ...]:
    return tuple((ipaddress.ip_network(network), reason) for network, reason in rows)


_IPV4 = _table(
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "special purpose"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "special purpose"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
)
_IPV6 = _table(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible"),
    ("64:ff9b:1::/48", "local NAT64"),
    ("100::/64", "discard-only"),
    ("2001::/23", "special purpose"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def forbidden_reason(address: IPAddress) -> str | None:
    """Why ``address`` is not on the public internet (``"loopback"``, ...), or None if it is."""
    if isinstance(address, ipaddress.IPv4Address):
        return next((reason for network, reason in _IPV4 if address in network), None)
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        form, inner = embedded
        reason = forbidden_reason(inner)
        return f"{reason} ({form})" if reason else None
    if address.teredo is not None:
        return "Teredo tunnel"
    address = ipaddress.IPv6Address(int(address))  # without a scope id, for the lookups
    reason = next((reason for network, reason in _IPV6 if address in network), None)
    if reason is None and address not in _GLOBAL_UNICAST:
        return "reserved"
    return reason


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    if address in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """The public internet, plus the operator's exceptions.

    ``allow`` entries are host names (exact, or ``*.suffix`` for every name under a domain),
    addresses or networks in CIDR form. Build it with :meth:`from_entries`.
    """

    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[_Network, ...] = field(default=())

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> AddressPolicy:
        """Parse ``fetch_allow_hosts``; raises ValueError for an entry that is neither."""
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[_Network] = []
        for entry in entries:
            text = entry.strip()
            try:
                networks.append(ipaddress.ip_network(text.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = normalise_host(text.removeprefix("*."))
            if not name or any(c in name for c in "/:@ *"):
                raise ValueError(f"{entry!r} is not a host name, address or network")
            if text.startswith("*."):
                suffixes.append("." + name)
            else:
                names.add(name)
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def allows_name(self, host: str) -> bool:
        """Whether ``host`` is an allowed name: everything it resolves to may be reached."""
        name = normalise_host(host)
        return name in self.names or name.endswith(self.suffixes)

    def refusal(self, host: str, addresses: Sequence[IPAddress]) -> str | None:
        """Why ``host``, which resolved to ``addresses``, may not be reached; None if it may.

        Every address must pass, so that a name with one public and one internal address
        cannot be used to reach the internal one.
        """
        if not addresses:
            return f"{host} resolved to no address"
        if self.allows_name(host):
            return None
        for address in addresses:
            reason = forbidden_reason(address)
            if reason is not None and not any(address in net for net in self.networks):
                return f"{host} resolves to {address}, a {reason} address"
        return None


def normalise_host(host: str) -> str:
    """A host name as compared: lowercase, without brackets or a trailing dot."""
    return host.strip("[]").rstrip(".").lower()
