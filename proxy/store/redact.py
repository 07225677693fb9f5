"""Keeping secrets out of what the store records: trajectories, events, logs.

Every occurrence of a secret value is replaced by ``[redacted:NAME]``. Values shorter
than :data:`MIN_SECRET_LENGTH` are left alone: replacing every "a" in a log protects
nothing. Fields whose name says they hold a credential are blanked whatever their value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MIN_SECRET_LENGTH = 4
REDACTED = "[redacted]"

_CREDENTIAL_FIELD = re.compile(
    r"(^|[_-])(api[_-]?key|apikey|token|password|passwd|secret|authorization)s?$", re.IGNORECASE
)


def redact(text: str, secrets: Mapping[str, str]) -> str:
    """``text`` with each secret value (``{name: value}``) replaced by its placeholder."""
    # Longest first, so a secret that contains another is replaced whole.
    for name, value in sorted(secrets.items(), key=lambda item: -len(item[1])):
        if len(value) >= MIN_SECRET_LENGTH and value in text:
            text = text.replace(value, f"[redacted:{name}]")
    return text


def redact_bytes(data: bytes, secrets: Mapping[str, str]) -> bytes:
    """:func:`redact` for a file's content, text or not: bytes that are no UTF-8 pass as
    they are (``surrogateescape`` gives them back unchanged)."""
    if not secrets:
        return data
    text = data.decode("utf-8", "surrogateescape")
    return redact(text, secrets).encode("utf-8", "surrogateescape")


def redact_value(value: Any, secrets: Mapping[str, str], *, credential_fields: bool = True) -> Any:
    """A copy of a JSON-like value with secrets redacted in every string, keys included.

    With ``credential_fields``, values under keys such as ``api_key`` or ``password`` are
    replaced by ``[redacted]`` even when they are not a known secret.
    """
    if isinstance(value, str):
        return redact(value, secrets) if secrets else value
    if isinstance(value, Mapping):
        copied: dict[str, Any] = {}
        for key, item in value.items():
            name = redact(str(key), secrets) if secrets else str(key)
            if isinstance(item, str):
                if credential_fields and _CREDENTIAL_FIELD.search(name):
                    copied[name] = REDACTED if item else item
                else:
                    copied[name] = redact(item, secrets) if secrets else item
            elif item is None or isinstance(item, int | float):
                copied[name] = item  # numbers and booleans hold no secret: no call for them
            else:
                copied[name] = redact_value(item, secrets, credential_fields=credential_fields)
        return copied
    if isinstance(value, list | tuple):
        return [redact_value(item, secrets, credential_fields=credential_fields) for item in value]
    return value
