"""The secret key: generated once with tight permissions, rotatable, wrong keys refused."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from proxy.store import SecretsUnavailable
from proxy.store.crypto import SecretBox, generate_key, load_or_create_key


def test_generated_once_with_0600(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="proxy.store"):
        key = load_or_create_key(None, tmp_path / "data")
    path = tmp_path / "data" / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "generated a secret key" in caplog.text
    assert load_or_create_key(None, tmp_path / "data") == key
    assert load_or_create_key("configured", tmp_path / "data") == "configured"
    SecretBox(key)


def test_seal_open_and_rotate() -> None:
    old, new = generate_key(), generate_key()
    sealed = SecretBox(old).seal("s3cret")
    assert b"s3cret" not in sealed
    assert SecretBox(old).open(sealed) == "s3cret"
    rotated = SecretBox(f"{new},{old}")
    assert rotated.open(sealed) == "s3cret"
    assert SecretBox(new).open(rotated.seal("x")) == "x"
    with pytest.raises(SecretsUnavailable):
        SecretBox(new).open(sealed)


def test_any_passphrase_derives_a_key() -> None:
    box = SecretBox("a long random passphrase from the operator")
    assert box.open(box.seal("v")) == "v"
    with pytest.raises(ValueError, match="empty"):
        SecretBox(" , ")
