"""Receiving a multipart upload: one file part and a few named fields.

The request-size middleware admits upload routes up to ``upload_max_bytes`` plus room for
the multipart framing; the file part itself is held to ``upload_max_bytes`` exactly while
it streams into the blob store. Either way an oversized upload is a 413 and nothing of it
is kept; so is an upload that finds the disk full, answered 507.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.requests import Request

from proxy.api.context import Services
from proxy.errors import BadRequest, InvalidField, PayloadTooLarge
from proxy.store.blobs import CHUNK_SIZE
from proxy.store.content import detect_content_type
from proxy.store.errors import BlobTooLarge, StorageFull
from proxy.store.faults import is_disk_full
from proxy.store.paths import sanitize_filename
from proxy.store.records import BlobInfo

UPLOAD_PATHS = frozenset({"/v1/files", "/api/v1/files", "/api/v1/sandbox/upload"})
#: Room for boundaries, part headers and the small text fields around the file.
MULTIPART_SLACK = 64 * 1024
MAX_FIELD_BYTES = 16 * 1024


def upload_body_limit(upload_max_bytes: int) -> int:
    """The request body limit for upload routes."""
    return upload_max_bytes + MULTIPART_SLACK


@dataclass(frozen=True)
class Upload:
    """A parsed multipart request whose file part has not been stored yet."""

    fields: dict[str, str]
    file: UploadFile
    filename: str


@dataclass(frozen=True)
class StoredUpload:
    blob: BlobInfo
    filename: str
    content_type: str


@asynccontextmanager
async def read_upload(request: Request, *, fields: frozenset[str]) -> AsyncIterator[Upload]:
    """Parse the form; the file part must be named ``file``, other fields one of ``fields``.

    The parsed file is spooled by Starlette and released when the block ends.
    """
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequest("Uploads must be sent as multipart/form-data.", code="invalid_upload")
    try:
        form = await request.form(
            max_files=1, max_fields=len(fields) + 1, max_part_size=MAX_FIELD_BYTES
        )
    except OSError as exc:
        # A file part spooled to the temporary directory (past 1 MiB) found it full; the
        # spool file was never linked into a directory, so nothing stays behind.
        if is_disk_full(exc):
            raise StorageFull(f"receiving an upload failed: {exc}") from exc
        raise
    try:
        values: dict[str, str] = {}
        upload: UploadFile | None = None
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != "file":
                    raise InvalidField(name, f"Unexpected file field '{name}': send it as 'file'.")
                upload = value
            elif name in fields:
                values[name] = value
            else:
                raise InvalidField(name, f"Unknown form field '{name}'.")
        if upload is None:
            raise InvalidField("file", "Missing the 'file' part of the upload.")
        yield Upload(fields=values, file=upload, filename=sanitize_filename(upload.filename))
    finally:
        await form.close()


async def store_upload(services: Services, upload: Upload) -> StoredUpload:
    """Stream the file part into the blob store, within ``upload_max_bytes``."""
    limit = services.settings.upload_max_bytes
    try:
        blob = await services.blobs.put(_chunks(upload.file), max_bytes=limit)
    except BlobTooLarge as exc:
        raise PayloadTooLarge(
            f"The file is larger than the upload limit of {limit} bytes."
        ) from exc
    return StoredUpload(
        blob=blob,
        filename=upload.filename,
        content_type=detect_content_type(blob.head, upload.filename),
    )


async def _chunks(file: UploadFile) -> AsyncIterator[bytes]:
    await file.seek(0)
    while chunk := await file.read(CHUNK_SIZE):
        yield chunk
