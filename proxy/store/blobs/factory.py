"""Choosing the blob store from its URL: ``file:///DIR`` or ``s3://BUCKET[/PREFIX]``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from proxy.store.blobs.base import BlobStore
from proxy.store.blobs.local import LocalBlobStore


@dataclass(frozen=True)
class BlobLocation:
    """A parsed blob URL: a directory, or a bucket and a key prefix."""

    directory: Path | None = None
    bucket: str = ""
    prefix: str = ""


def parse_blob_url(url: str) -> BlobLocation:
    """Raises ValueError, saying what is expected, for anything but an absolute
    ``file:///DIR`` (or ``file://localhost/DIR``) or an ``s3://BUCKET[/PREFIX]``."""
    parts = urlsplit(url)
    if parts.scheme == "s3" and parts.netloc:
        return BlobLocation(bucket=parts.netloc, prefix=unquote(parts.path).strip("/"))
    if parts.scheme == "file" and parts.netloc in ("", "localhost") and parts.path[:1] == "/":
        return BlobLocation(directory=Path(unquote(parts.path)))
    raise ValueError(f"blob URL must be file:///ABSOLUTE/DIR or s3://BUCKET/PREFIX, not {url!r}")


def open_blob_store(url: str) -> BlobStore:
    """The store ``url`` names; an object store's library is imported only here."""
    location = parse_blob_url(url)
    if location.directory is not None:
        return LocalBlobStore(location.directory)
    from proxy.store.blobs.s3 import S3BlobStore

    return S3BlobStore(location.bucket, location.prefix)
