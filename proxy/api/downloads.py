"""Serving stored content: always as an attachment, never sniffed, never rendered in place."""

from __future__ import annotations

import zipfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from urllib.parse import quote

import anyio.to_thread
from starlette.responses import StreamingResponse

from proxy.store.blobs import BlobStore
from proxy.store.content import serving_type
from proxy.store.paths import sanitize_filename

#: A download is data, whatever it contains: no scripts, no plugins, no same-origin reads.
SAFE_HEADERS = MappingProxyType(
    {
        "x-content-type-options": "nosniff",
        "content-security-policy": "default-src 'none'; sandbox",
        "cache-control": "private, no-store",
    }
)


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback name and the exact name in RFC 5987 form."""
    name = sanitize_filename(filename)
    fallback = name.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


async def blob_response(
    blobs: BlobStore, key: str, *, filename: str, content_type: str, size: int, sha256: str
) -> StreamingResponse:
    """Stream one blob as a download. Raises before the response starts if it is missing."""
    chunks = await blobs.open(key)
    headers = {
        **SAFE_HEADERS,
        "content-disposition": content_disposition(filename),
        "content-length": str(size),
        "etag": f'"{sha256}"',
    }
    return StreamingResponse(chunks, media_type=serving_type(content_type), headers=headers)


@dataclass(frozen=True)
class ZipEntry:
    path: str
    blob_key: str
    size: int
    modified: datetime


def zip_response(
    blobs: BlobStore, entries: Sequence[ZipEntry], *, filename: str
) -> StreamingResponse:
    """A zip of the entries, built while it streams (no temporary file, no size limit)."""
    headers = {**SAFE_HEADERS, "content-disposition": content_disposition(filename)}
    return StreamingResponse(
        _zip_stream(blobs, entries), media_type="application/zip", headers=headers
    )


class _Sink:
    """A write-only, unseekable file: zipfile then streams, writing data descriptors."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


async def _zip_stream(blobs: BlobStore, entries: Sequence[ZipEntry]) -> AsyncIterator[bytes]:
    sink = _Sink()
    archive = zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_DEFLATED)
    for entry in entries:
        info = zipfile.ZipInfo(entry.path, date_time=_zip_time(entry.modified))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.file_size = entry.size
        chunks = await blobs.open(entry.blob_key)
        with archive.open(info, mode="w", force_zip64=entry.size >= zipfile.ZIP64_LIMIT) as dest:
            async for chunk in chunks:
                # Compression is CPU work: keep it off the event loop.
                await anyio.to_thread.run_sync(dest.write, chunk)
                if data := sink.take():
                    yield data
        yield sink.take()
    archive.close()
    yield sink.take()


def _zip_time(moment: datetime) -> tuple[int, int, int, int, int, int]:
    # Zip timestamps cannot go before 1980.
    year = max(moment.year, 1980)
    return (year, moment.month, moment.day, moment.hour, moment.minute, moment.second)
