"""Sealing collection secrets, so a copy of the database alone does not reveal them.

Secrets are encrypted with Fernet (AES-128-CBC + HMAC-SHA256) under a key from the
server's configuration (``secret_key``). Several comma-separated keys rotate: the first
seals, all of them open. Without a configured key one is generated once into
``<data_dir>/secret.key`` (mode 0600); every process sharing a database must share the key.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proxy.store.errors import SecretsUnavailable

logger = logging.getLogger("proxy.store")

KEY_FILE = "secret.key"


class SecretBox:
    """Seals and opens secret values with the server's key(s)."""

    def __init__(self, keys: str):
        parts = [part.strip() for part in keys.split(",") if part.strip()]
        if not parts:
            raise ValueError("secret_key is empty")
        self._fernet = MultiFernet([Fernet(_fernet_key(part)) for part in parts])

    def seal(self, value: str) -> bytes:
        return self._fernet.encrypt(value.encode())

    def open(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(bytes(token)).decode()
        except InvalidToken as exc:
            raise SecretsUnavailable(
                "a stored secret cannot be opened with the configured secret_key"
                " (was the key changed without keeping the old one?)"
            ) from exc


def generate_key() -> str:
    """A fresh key in the form ``secret_key`` expects."""
    return Fernet.generate_key().decode()


def load_or_create_key(configured: str | None, data_dir: Path) -> str:
    """The configured key, else the one in ``data_dir/secret.key``, created on first use."""
    if configured:
        return configured
    path = data_dir / KEY_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    try:
        # O_EXCL: when two processes start at once, exactly one key wins.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    logger.warning(
        "generated a secret key for collection secrets in %s; back it up, and give every"
        " process that shares this database the same key (JETTY_PROXY_SECRET_KEY)",
        path,
    )
    return key


def _fernet_key(text: str) -> bytes:
    """A Fernet key as given, or one derived from any other string (use a long random one)."""
    try:
        if len(base64.urlsafe_b64decode(text.encode())) == 32:
            return text.encode()
    except (binascii.Error, ValueError):
        pass
    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"jetty-proxy collection secrets"
    ).derive(text.encode())
    return base64.urlsafe_b64encode(derived)
