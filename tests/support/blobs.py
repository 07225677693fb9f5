"""Blob contents for tests: content streamed from elsewhere, as from an object store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True)
class StreamedBytes:
    """A `StreamedFile` (content streamed from elsewhere, as from an object store) over
    ``parts``; ``fail_after`` parts it raises ConnectionResetError instead."""

    parts: tuple[bytes, ...]
    fail_after: int | None = None

    async def open(self) -> AsyncIterator[bytes]:
        async def chunks() -> AsyncIterator[bytes]:
            for index, part in enumerate(self.parts):
                if index == self.fail_after:
                    raise ConnectionResetError("the object store went away")
                yield part

        return chunks()
