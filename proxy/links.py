"""Signed links to one run: what a browser tab opened from a chat answer can use without a key.

A chat UI shows a run's result files, its results zip and its page as links. Whoever clicks
one opens a tab without the ``Authorization`` header the chat UI used, so with keys turned on
a plain link would be a 401. Links therefore carry a signature in their path::

    {origin}/s/{expires}.{mac}/runs/acme/analysis/a1b2c3d4
    {origin}/s/{expires}.{mac}/api/v1/trajectory/acme/analysis/a1b2c3d4/artifacts/chart.png

``mac`` is HMAC-SHA256 over the run (collection, task, id) and ``expires`` (Unix seconds),
keyed with a key derived from the server's ``secret_key`` (the one that seals collection
secrets; with several comma-separated keys, the first signs and every one verifies, so keys
rotate without breaking links). A signature opens the GET routes of that one run (its page,
event stream, result files and zip) until it expires, ``link_lifetime_seconds`` after the run
started (7 days by default); nothing else. Putting it in the path, not the query, lets every
URL a run builds (``{base_url}/api/v1/…``) come out signed by building it on a signed base.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proxy.errors import ProxyError

#: First path segment of a signed link; the token follows it.
SIGNED_PREFIX = "/s"
_MAC_BYTES = 32
_MAX_TOKEN_LENGTH = 80


class LinkRejected(ProxyError):
    """A signed link that is malformed, forged, for another run, or expired (403)."""

    status_code = 403
    error_type = "permission_error"
    code = "link_invalid"


@dataclass(frozen=True)
class RunLinks:
    """The signed URLs of one run, all under ``base`` (``{origin}/s/{token}``)."""

    base: str
    collection: str
    task: str
    run_id: str
    expires: int

    @property
    def _names(self) -> str:
        return f"{quote(self.collection, safe='')}/{quote(self.task, safe='')}/{self.run_id}"

    def page(self) -> str:
        """The run's page (HTML)."""
        return f"{self.base}/runs/{self._names}"

    def trajectory(self) -> str:
        """The run's REST path prefix (``…/events``, ``…/download``, ``…/artifacts/PATH``)."""
        return f"{self.base}/api/v1/trajectory/{self._names}"

    def artifact(self, path: str) -> str:
        return f"{self.trajectory()}/artifacts/{quote(path)}"

    def results_zip(self) -> str:
        return f"{self.trajectory()}/download"

    def events(self) -> str:
        return f"{self.trajectory()}/events"


class LinkSigner:
    """Signs and checks run links with keys derived from the server's ``secret_key``."""

    def __init__(
        self,
        secret_keys: str,
        *,
        lifetime_seconds: float,
        clock: Callable[[], float] = time.time,
    ):
        parts = [part.strip() for part in secret_keys.split(",") if part.strip()]
        if not parts:
            raise ValueError("secret_key is empty")
        self._keys = [_derive(part) for part in parts]
        self._lifetime = lifetime_seconds
        self._clock = clock

    def links(self, origin: str, collection: str, task: str, run_id: str) -> RunLinks:
        """Links to the run, valid for the configured lifetime from now."""
        expires = int(self._clock() + self._lifetime)
        token = f"{expires}.{self._mac(self._keys[0], collection, task, run_id, expires)}"
        return RunLinks(
            base=f"{origin.rstrip('/')}{SIGNED_PREFIX}/{token}",
            collection=collection,
            task=task,
            run_id=run_id,
            expires=expires,
        )

    def check(self, token: str, collection: str, task: str, run_id: str) -> RunLinks:
        """The run's links under the same token (relative: ``/s/{token}/…``); raises
        :class:`LinkRejected` unless ``token`` signs this run and has not expired.

        A forged or foreign token is told apart from an expired one only after its MAC
        checks out: an expiry is news only to someone who held a valid link.
        """
        expires_text, dot, mac = token.partition(".")
        if (
            not dot
            or not token.isascii()
            or len(token) > _MAX_TOKEN_LENGTH
            or not expires_text.isdigit()
            or len(expires_text) > 12
        ):
            raise LinkRejected("This link is not valid.")
        expires = int(expires_text)
        if not any(
            hmac.compare_digest(mac, self._mac(key, collection, task, run_id, expires))
            for key in self._keys
        ):
            raise LinkRejected("This link is not valid for this run.")
        if expires < self._clock():
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires))
            raise LinkRejected(f"This link expired at {when}.", code="link_expired")
        return RunLinks(f"{SIGNED_PREFIX}/{token}", collection, task, run_id, expires)

    @staticmethod
    def _mac(key: bytes, collection: str, task: str, run_id: str, expires: int) -> str:
        message = "\0".join(("run", collection, task, run_id, str(expires))).encode()
        digest = hmac.new(key, message, hashlib.sha256).digest()[:_MAC_BYTES]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _derive(secret: str) -> bytes:
    """A signing key of its own, so that a link never reveals anything about the sealing key."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"jetty-proxy run links"
    ).derive(secret.encode())
