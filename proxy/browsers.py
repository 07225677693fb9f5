"""What web pages may ask of a server that has no keys.

A server without keys serves everyone who reaches it as its single local user. Programs on
the machine (curl, the SDKs, a chat UI's backend) are meant to; web pages open in the user's
browser are not, yet a browser lets any page send some requests to ``127.0.0.1`` — a form or
a ``fetch`` with ``text/plain`` starts a run without asking anyone (cross-site request
forgery), and a page whose own name was re-pointed at ``127.0.0.1`` can even read the answers
(DNS rebinding). :class:`BrowserGuard` refuses, with a 403:

* requests whose ``Host`` is not a loopback name or address, ``public_base_url``'s host or
  one of ``allowed_hosts`` (DNS rebinding; checked only on loopback binds, where these are
  the names the server is reached by);
* state-changing requests (anything but GET, HEAD and OPTIONS) that a browser marks as coming
  from another page: an ``Origin`` other than the server's own or one of ``allowed_origins``,
  or ``Sec-Fetch-Site: cross-site`` / ``same-site``;
* state-changing requests without ``Origin`` sent as ``text/plain`` or
  ``application/x-www-form-urlencoded``: what an HTML form of an older browser sends.

Requests without these headers (curl, the SDKs, servers) pass. Reading (GET) stays open to
pages, so a result link in a chat UI still downloads; a page cannot read what it gets back
without CORS, which only ``allowed_origins`` receive.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping
from urllib.parse import urlsplit

from proxy.errors import Forbidden

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Content types an HTML form can send; a JSON API never needs them.
_FORM_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class BrowserGuard:
    """Checks a request served as the local user; raises :class:`Forbidden` for one a web
    page sent on its own account."""

    def __init__(
        self,
        *,
        allowed_origins: Collection[str] = (),
        allowed_hosts: Collection[str] = (),
        check_host: bool = True,
    ):
        self._origins = frozenset(normalise_origin(origin) for origin in allowed_origins)
        self._hosts = frozenset(host.lower().rstrip(".") for host in allowed_hosts)
        self._check_host = check_host

    def check(self, headers: Mapping[str, str], method: str) -> None:
        host = headers.get("host")
        if self._check_host and host is not None and not self._known_host(host):
            raise Forbidden(
                f"Requests for the host '{host}' are refused: this server has no API keys and"
                " answers only to its loopback names (add the name to allowed_hosts if it is"
                " yours).",
                code="unexpected_host",
            )
        if method in SAFE_METHODS:
            return
        origin = headers.get("origin")
        if origin is not None:
            if origin == "null" or not self._known_origin(origin, host):
                raise _cross_site(origin)
            return
        if headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            raise _cross_site("another site")
        media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type in _FORM_TYPES:
            raise Forbidden(
                f"'{media_type}' requests are refused: this server has no API keys, and web"
                " pages can send that type to it. Send 'Content-Type: application/json'.",
                code="cross_site_request",
            )

    def _known_host(self, host: str) -> bool:
        name = _hostname(host)
        return name in self._hosts or is_loopback_name(name)

    def _known_origin(self, origin: str, host: str | None) -> bool:
        try:
            normalised = normalise_origin(origin)
        except ValueError:
            return False
        if normalised in self._origins:
            return True
        # The server's own origin: the page came from this server (it serves none, but a
        # browser sends Origin on its own requests too).
        return host is not None and urlsplit(normalised).netloc == host.strip().lower()


def normalise_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case, without a default port; ValueError otherwise."""
    parts = urlsplit(origin.strip().lower().rstrip("/"))
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path or parts.query:
        raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS[parts.scheme]:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}"


def is_loopback_name(name: str) -> bool:
    """``localhost``, a name under ``.localhost`` (browsers resolve those to loopback
    themselves), or a loopback address."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def _hostname(host: str) -> str:
    name = host.strip().lower()
    if name.startswith("["):
        return name.partition("]")[0] + "]"
    return name.partition(":")[0].rstrip(".")


def _cross_site(origin: str) -> Forbidden:
    return Forbidden(
        f"Cross-site request from {origin} refused: this server has no API keys, so web pages"
        " may not use it. Add the page's origin to allowed_origins to let it.",
        code="cross_site_request",
    )
