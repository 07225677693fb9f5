"""Blobs in an S3-compatible object store (``s3://bucket/prefix``): AWS S3, MinIO, Cloudflare
R2, GCS's S3 API.

Built on obstore (``jetty-proxy[s3]``, imported when such a store is opened). Endpoint, region
and credentials come from the standard AWS settings in the environment (``AWS_ENDPOINT_URL``,
``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, else the instance or container role). The bucket must exist.

A write is buffered up to ``part_size``: smaller content goes up in one request, larger content
as a multipart upload of ``part_size`` parts, at most ``concurrency`` in flight (so at most
about ``part_size * (concurrency + 1)`` bytes are held). A failed, oversized or cancelled write
aborts its multipart upload: no object, no parts left behind. The object appears only when the
upload completes. Reads stream from one request.

An endpoint that does not answer, or answers with server errors, is retried for at most
``RETRY_TIMEOUT``; then the call raises :class:`~proxy.store.errors.BlobsUnavailable` (the
HTTP edge answers 503, retry). Refused credentials or a missing bucket are a plain
:class:`~proxy.store.errors.StoreError`: retrying will not fix them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterable, AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from proxy.store.blobs.base import CHUNK_SIZE, BlobHealth, Meter, check_key, new_key
from proxy.store.errors import BlobsUnavailable, RecordNotFound, StoreError
from proxy.store.records import BlobInfo

if TYPE_CHECKING:
    from obstore import AsyncWritableFile
    from obstore.store import ClientConfig

logger = logging.getLogger("proxy.store")

PART_SIZE = 8 * 1024 * 1024
CONCURRENCY = 4
#: A read stalled this long fails; a whole request (a download to a slow client) may last a day.
READ_TIMEOUT = timedelta(seconds=60)
REQUEST_TIMEOUT = timedelta(days=1)
CHECK_TIMEOUT = timedelta(seconds=3)
#: How long a request keeps being retried (the client's default is three minutes: a request
#: to an unreachable store would hang that long before it fails).
RETRY_TIMEOUT = timedelta(seconds=20)
CONNECT_TIMEOUT = timedelta(seconds=5)
_ERROR_CODE = re.compile(r"<Code>(\w+)</Code>")


class S3BlobStore:
    """Blobs as objects ``<prefix>/<key>`` in ``bucket``."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        part_size: int = PART_SIZE,
        concurrency: int = CONCURRENCY,
    ):
        try:
            from obstore.store import S3Store
        except ImportError as exc:
            raise StoreError(
                "s3:// blob URLs need the s3 extra: pip install 'jetty-proxy[s3]'"
            ) from exc
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        self.concurrency = concurrency
        # The endpoint's scheme is the operator's choice (a MinIO on http inside a cluster).
        common: ClientConfig = {"allow_http": True}
        self._store = S3Store(
            bucket,
            prefix=self.prefix or None,
            client_options={
                **common,
                "connect_timeout": CONNECT_TIMEOUT,
                "read_timeout": READ_TIMEOUT,
                "timeout": REQUEST_TIMEOUT,
            },
            retry_config={"max_retries": 10, "retry_timeout": RETRY_TIMEOUT},
        )
        # Readiness asks once and briefly: the client's retries would take minutes to give up
        # on an unreachable endpoint, and a request abandoned mid-flight keeps running.
        self._probe = S3Store(
            bucket,
            prefix=self.prefix or None,
            client_options={**common, "connect_timeout": CHECK_TIMEOUT, "timeout": CHECK_TIMEOUT},
            retry_config={"max_retries": 0, "retry_timeout": CHECK_TIMEOUT},
        )

    def __repr__(self) -> str:
        return f"S3BlobStore(s3://{self.bucket}/{self.prefix})"

    def local_path(self, key: str) -> Path | None:
        return None

    async def put(self, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> BlobInfo:
        import obstore

        key = new_key()
        meter = Meter(max_bytes)
        writer = obstore.open_writer_async(
            self._store, key, buffer_size=self.part_size, max_concurrency=self.concurrency
        )
        closing = False
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                meter.count(chunk)
                meter.digest.update(chunk)
                await writer.write(chunk)
            closing = True
            await writer.close()
        except BaseException as exc:
            # A failed close has ended the writer (and aborted its upload) already.
            if not closing:
                with anyio.CancelScope(shield=True):
                    await _abort(writer, exc)
            if isinstance(exc, obstore.exceptions.BaseError) or closing:
                raise _fault("writing a blob", exc) from exc
            raise
        return meter.info(key)

    async def open(self, key: str, *, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        import obstore

        try:
            result = await obstore.get_async(self._store, check_key(key))
        except FileNotFoundError as exc:
            raise RecordNotFound(f"blob {key} is missing") from exc
        except obstore.exceptions.BaseError as exc:
            raise _fault("reading a blob", exc) from exc
        stream = result.stream(min_chunk_size=chunk_size)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for part in stream:
                    view = memoryview(part)
                    for start in range(0, len(view), chunk_size):
                        yield bytes(view[start : start + chunk_size])
            except obstore.exceptions.BaseError as exc:
                raise _fault(f"reading blob {key}", exc) from exc

        return chunks()

    async def delete(self, key: str) -> None:
        import obstore

        try:
            await obstore.delete_async(self._store, check_key(key))
        except FileNotFoundError:
            pass
        except obstore.exceptions.BaseError as exc:
            raise _fault("deleting a blob", exc) from exc

    async def health(self) -> BlobHealth:
        """One listing request, without retries: the bucket exists and the credentials may
        list it. (An object store's free space is not known.)"""
        import obstore

        try:
            await anext(aiter(obstore.list(self._probe, chunk_size=1)), None)
        except obstore.exceptions.BaseError as exc:
            return BlobHealth(problem=f"s3://{self.bucket} is unavailable: {_brief(exc)}")
        return BlobHealth()


async def _abort(writer: AsyncWritableFile, exc: BaseException) -> None:
    """Abort a write (its multipart upload, if one was started); a failure is only logged."""
    try:
        # Leaving the writer's context with an exception is its abort (it has no other).
        await writer.__aexit__(type(exc), exc, exc.__traceback__)
    except Exception:
        logger.warning("aborting an object-store upload failed", exc_info=True)


def _fault(doing: str, exc: BaseException) -> StoreError:
    """The store's error for an obstore failure: refused credentials, a missing bucket or a
    bad configuration are for the operator to fix; anything else (no answer, server errors,
    after the client's retries) may pass."""
    import obstore

    message = f"{doing} failed: {_brief(exc)}"
    lasting = (
        obstore.exceptions.PermissionDeniedError,
        obstore.exceptions.UnauthenticatedError,
        obstore.exceptions.UnknownConfigurationKeyError,
        obstore.exceptions.NotSupportedError,
    )
    if isinstance(exc, lasting) or "NoSuchBucket" in str(exc):
        return StoreError(message)
    return BlobsUnavailable(message)


def _brief(exc: BaseException) -> str:
    """The first line of an obstore error, without the response body it quotes (the rest is a
    debug dump of the request); the S3 error code, when there is one, stays."""
    text = str(exc).strip()
    line = text.split("\n", 1)[0].split(": <?xml", 1)[0]
    code = _ERROR_CODE.search(text)
    return f"{line} ({code.group(1)})" if code else line
