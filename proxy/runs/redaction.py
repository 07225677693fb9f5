"""Collection secrets out of what a live run shows its followers, as the events come.

The store redacts what it records (``proxy.store.redact``); the live stream is redacted here,
before anything reaches a chat chunk. The agent's answer and its visible thinking arrive as
deltas, and a secret may be cut across two of them: each of the two texts goes through its own
:class:`~proxy.store.redact.StreamRedactor`, which holds back the end that could still become a
secret. Every other event is whole and is redacted whole, after the held-back text (which came
before it) has been let out::

    redactor = LiveRedactor.of(collection_secrets)      # None: no secret to hide
    for event in redactor.feed(event): publish(event)
    for event in redactor.flush(): publish(event)       # at the end of the run
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TypeVar

from proxy.events import Event, ReasoningDelta, TextDelta, Usage, from_dict
from proxy.store.redact import StreamRedactor, redact, redact_value

__all__ = ["LiveRedactor"]

_Delta = type[TextDelta] | type[ReasoningDelta]
_T = TypeVar("_T")


class LiveRedactor:
    """Redacts one run's events; see the module docstring."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        self._secrets = MappingProxyType(dict(secrets))
        self._streams: dict[_Delta, StreamRedactor] = {
            TextDelta: StreamRedactor(secrets),
            ReasoningDelta: StreamRedactor(secrets),
        }

    @classmethod
    def of(cls, secrets: Mapping[str, str]) -> LiveRedactor | None:
        """A redactor for ``secrets``, or None when none is long enough to be redacted."""
        redactor = cls(secrets)
        return redactor if redactor._streams[TextDelta].active else None

    def feed(self, event: Event) -> list[Event]:
        """The events to publish for ``event``: none, one, or held-back text and then it."""
        if isinstance(event, TextDelta | ReasoningDelta):
            kind: _Delta = type(event)
            # The other text's held-back end came first: it goes out before this one.
            out = self._flush(other for other in self._streams if other is not kind)
            text = self._streams[kind].feed(event.text)
            if text:
                out.append(kind(text))
            return out
        out = self.flush()
        out.append(self._whole(event))
        return out

    def flush(self) -> list[Event]:
        """What is still held back, as deltas (the end of the run, or before a whole event)."""
        return self._flush(self._streams)

    def redact(self, text: str) -> str:
        """A whole text (an error message) with the secrets replaced."""
        return redact(text, self._secrets)

    def redact_value(self, value: _T) -> _T:
        """A JSON-like value (the artifacts list) with the secrets replaced in every string."""
        redacted: _T = redact_value(value, self._secrets, credential_fields=False)
        return redacted

    def _flush(self, kinds: Iterable[_Delta]) -> list[Event]:
        out: list[Event] = []
        for kind in kinds:
            text = self._streams[kind].flush()
            if text:
                out.append(kind(text))
        return out

    def _whole(self, event: Event) -> Event:
        if isinstance(event, Usage):
            return event  # numbers only
        data = redact_value(event.to_dict(), self._secrets, credential_fields=False)
        data["type"] = event.type  # a secret that happens to spell a type name stays a type
        return from_dict(data)
