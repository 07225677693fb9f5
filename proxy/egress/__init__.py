"""Requests the server makes on a client's behalf, kept off internal networks.

``addresses.py`` decides which addresses are internal (pure); ``transport.py`` is the httpx
transport that resolves, checks and pins every connection (redirects included).
"""

from proxy.egress.addresses import AddressPolicy, forbidden_reason
from proxy.egress.transport import AddressRefused, GuardedTransport, resolve

__all__ = ["AddressPolicy", "AddressRefused", "GuardedTransport", "forbidden_reason", "resolve"]
