"""Keeping secrets out of what the store records (trajectories, events, logs) and out of what
a run streams live.

Every occurrence of a secret value is replaced by ``[redacted:NAME]``. Values shorter
than :data:`MIN_SECRET_LENGTH` are left alone: replacing every "a" in a log protects
nothing. Fields whose name says they hold a credential are blanked whatever their value.

:class:`StreamRedactor` does the same for a text that arrives in pieces, where a value can be
split across two of them: it holds back the end of what it was given for as long as that end
could still become a secret (at most the longest secret's length less one character).
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


class StreamRedactor:
    """Redacts one text stream piece by piece::

        redactor = StreamRedactor(secrets)
        for piece in pieces:
            send(redactor.feed(piece))   # what is safe to show now
        send(redactor.flush())           # the rest, at the end of the stream

    What comes out, joined, is the whole text with every secret value replaced (leftmost
    first; where several start at one place, the longest). No value is ever let out in part
    before it is known not to be one.
    """

    def __init__(self, secrets: Mapping[str, str]) -> None:
        names: dict[str, str] = {}
        for name, value in sorted(secrets.items(), key=lambda item: -len(item[1])):
            if len(value) >= MIN_SECRET_LENGTH:
                names.setdefault(value, name)
        self._names = names
        # Longest first: at one position, the regex takes the first alternative that matches.
        self._pattern = re.compile("|".join(re.escape(value) for value in names)) if names else None
        self._pending = ""

    @property
    def active(self) -> bool:
        """False when there is nothing to redact (no secret long enough)."""
        return self._pattern is not None

    @property
    def held(self) -> int:
        """How many characters given so far are held back (less than the longest secret)."""
        return len(self._pending)

    def feed(self, text: str) -> str:
        """Take the next piece; return what can be shown now (possibly empty)."""
        if self._pattern is None:
            return text
        text = self._pending + text
        cut = len(text) - self._held_back(text)
        shown, end = self._replace(text, cut)
        self._pending = text[end:]
        return shown

    def flush(self) -> str:
        """The end of the stream: whatever was held back, redacted."""
        text, self._pending = self._pending, ""
        return self._replace(text, len(text))[0] if text else ""

    def _replace(self, text: str, cut: int) -> tuple[str, int]:
        """``text`` up to ``cut`` with its secrets replaced (a secret that starts before ``cut``
        is complete in ``text``, see `_held_back`), and where the output stopped."""
        assert self._pattern is not None
        parts: list[str] = []
        done = 0
        for match in self._pattern.finditer(text):
            if match.start() >= cut:
                break
            parts += (text[done : match.start()], f"[redacted:{self._names[match[0]]}]")
            done = match.end()
        if done < cut:
            parts.append(text[done:cut])
            done = cut
        return "".join(parts), done

    def _held_back(self, text: str) -> int:
        """The length of the longest end of ``text`` that a secret starts with (and is longer
        than): those characters may yet become a secret, or a longer one."""
        held = 0
        for value in self._names:
            first = value[0]
            start = max(len(text) - len(value) + 1, 0)
            while (start := text.find(first, start)) != -1:
                if len(text) - start <= held:
                    break
                if value.startswith(text[start:]):
                    held = len(text) - start
                    break
                start += 1
        return held


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
