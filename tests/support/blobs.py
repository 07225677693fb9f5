"""Blob stores for tests: a directory, or a fresh bucket on the test S3 server.

S3 tests run when ``JETTY_PROXY_TEST_S3_ENDPOINT`` names an S3-compatible server that takes
unsigned requests for the tests' own set-up and inspection (moto's server mode:
``scripts/ci/s3.sh`` starts one and prints the ``export`` line). Elsewhere they skip — except
under ``CI=true``, where a missing server is a failure. The store itself gets the endpoint
and credentials the way a deployment does: through the standard AWS settings.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.stores import service_url

S3_ENV = "JETTY_PROXY_TEST_S3_ENDPOINT"
BLOB_STORES = (
    pytest.param("directory", id="directory"),
    pytest.param("s3", id="s3", marks=pytest.mark.s3),
)
_NS = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}
# moto takes the account from the credential and checks no signature, but refuses anonymous
# deletes of objects an account wrote.
_AS_TEST_ACCOUNT = {
    "authorization": "AWS4-HMAC-SHA256 Credential=test/20000101/us-east-1/s3/aws4_request,"
    " SignedHeaders=host, Signature=0"
}


@dataclass(frozen=True)
class S3Bucket:
    """A bucket of its own on the test server; its blobs live under ``prefix``."""

    endpoint: str
    name: str
    prefix: str = "blobs"

    @property
    def url(self) -> str:
        return f"s3://{self.name}/{self.prefix}"

    def keys(self) -> list[str]:
        """Every object in the bucket."""
        listing = self._get({"list-type": "2"})
        return [key.text or "" for key in listing.iterfind("s3:Contents/s3:Key", _NS)]

    def uploads(self) -> list[tuple[str, str]]:
        """Multipart uploads begun and neither completed nor aborted: (key, upload id)."""
        listing = self._get({"uploads": ""})
        return [
            (upload.findtext("s3:Key", "", _NS), upload.findtext("s3:UploadId", "", _NS))
            for upload in listing.iterfind("s3:Upload", _NS)
        ]

    def create(self) -> None:
        self._call("PUT")

    def drop(self) -> None:
        for key, upload_id in self.uploads():
            self._call("DELETE", key, {"uploadId": upload_id})
        for key in self.keys():
            self._call("DELETE", key)
        self._call("DELETE")

    def _get(self, params: dict[str, str]) -> ET.Element:
        return ET.fromstring(self._call("GET", params=params).content)

    def _call(
        self, method: str, key: str = "", params: dict[str, str] | None = None
    ) -> httpx.Response:
        url = f"{self.endpoint}/{self.name}/{key}" if key else f"{self.endpoint}/{self.name}"
        response = httpx.request(method, url, params=params, headers=_AS_TEST_ACCOUNT)
        response.raise_for_status()
        return response


@contextmanager
def s3_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Bucket]:
    """A fresh bucket on the test server, with the AWS settings pointing at it."""
    endpoint = service_url(S3_ENV, "S3 object store")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    bucket = S3Bucket(endpoint, f"jetty-test-{uuid.uuid4().hex[:12]}")
    bucket.create()
    try:
        yield bucket
    finally:
        bucket.drop()


@dataclass(frozen=True)
class BlobPlace:
    """Where a test's blob store keeps its content (``url``), and what is left there: every
    file or object, and every unfinished multipart upload."""

    kind: str
    url: str
    leftovers: Callable[[], list[str]]


@pytest.fixture(name="blob_place", params=BLOB_STORES)
def blob_place_fixture(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[BlobPlace]:
    """An empty blob store location, once per kind of store."""
    if request.param == "directory":
        root = tmp_path / "blobs"
        yield BlobPlace(
            "directory",
            root.as_uri(),
            lambda: sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()),
        )
        return
    with s3_bucket(monkeypatch) as bucket:
        yield BlobPlace(
            "s3",
            bucket.url,
            lambda: bucket.keys() + [f"unfinished upload of {key}" for key, _ in bucket.uploads()],
        )


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
