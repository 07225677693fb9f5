"""File contents (uploads, artifacts, saved sessions) live in a blob store; the database keeps
their metadata. The seam is `BlobStore`; a directory (`LocalBlobStore`) or an S3-compatible
object store (`proxy.store.blobs.s3.S3BlobStore`, imported only when used) implements it."""

from proxy.store.blobs.base import (
    CHUNK_SIZE,
    BlobHealth,
    BlobStore,
    StreamedBlob,
    file_source,
    read_all,
)
from proxy.store.blobs.factory import open_blob_store
from proxy.store.blobs.local import LocalBlobStore
from proxy.store.errors import BlobTooLarge

__all__ = [
    "CHUNK_SIZE",
    "BlobHealth",
    "BlobStore",
    "BlobTooLarge",
    "LocalBlobStore",
    "StreamedBlob",
    "file_source",
    "open_blob_store",
    "read_all",
]
