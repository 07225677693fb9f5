"""Engine calls against `httpx.MockTransport`: request shapes and error mapping.

The messages are the ones a real engine and registry give (Docker 20.10, distribution 2.8,
and Docker Hub's wording for private repositories); the real-engine tests cover the rest.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from proxy.environments import (
    BuildFailed,
    EnvironmentFailed,
    ImageNotFound,
    ImageNotPublic,
    RegistryUnreachable,
    WrongPlatform,
)
from proxy.environments.engine import ImageEngine, pull_error
from proxy.sandbox.dockerapi import Engine

pytestmark = pytest.mark.anyio

REF = "127.0.0.1:5000/acme/env:v1"


@pytest.mark.parametrize(
    ("status", "message", "error"),
    [
        (
            500,
            'Head "http://127.0.0.1:5001/v2/acme/secret/manifests/v1": no basic auth credentials',
            ImageNotPublic,
        ),
        (500, "unauthorized: authentication required", ImageNotPublic),
        (500, "error parsing HTTP 403 response body: unexpected end of JSON input", ImageNotPublic),
        (
            404,
            "manifest for 127.0.0.1:5000/acme/env:missing not found: manifest unknown",
            ImageNotFound,
        ),
        (
            404,
            "pull access denied for acme/private, repository does not exist or may require"
            " 'docker login': denied: requested access to the resource is denied",
            ImageNotFound,
        ),
        (
            404,
            "no matching manifest for linux/amd64 in the manifest list entries",
            WrongPlatform,
        ),
        (
            500,
            'Get "http://127.0.0.1:5002/v2/": dial tcp 127.0.0.1:5002: connect: connection refused',
            RegistryUnreachable,
        ),
        (500, "something else entirely", EnvironmentFailed),
    ],
)
def test_pull_errors_are_told_apart(
    status: int, message: str, error: type[EnvironmentFailed]
) -> None:
    found = pull_error(REF, status, message)
    assert type(found) is error
    assert REF in found.message
    assert message in found.message
    if error is ImageNotPublic:
        assert "must be public" in found.message


def test_a_digest_that_happens_to_hold_403_is_not_an_auth_error() -> None:
    found = pull_error(REF, 404, f"manifest for {REF}@sha256:ab403f not found: manifest unknown")
    assert type(found) is ImageNotFound


def _engine(handler: Callable[[httpx.Request], httpx.Response]) -> ImageEngine:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://d/v1.41")
    return ImageEngine(Engine(client, "mock"))


def _lines(*messages: dict[str, object]) -> bytes:
    return b"".join(json.dumps(m).encode() + b"\r\n" for m in messages)


async def test_pull_asks_for_name_and_tag_and_reports_progress() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = _lines(
            {"status": "Pulling from acme/env", "id": "v1"},
            {"status": "Pulling fs layer", "progressDetail": {}, "id": "l1"},
            {"status": "Downloading", "progressDetail": {"current": 5, "total": 10}, "id": "l1"},
            {"status": "Pull complete", "progressDetail": {}, "id": "l1"},
            {"status": "Digest: sha256:" + "c" * 64},
        )
        return httpx.Response(200, content=body + b"not json\r\n")

    said: list[str] = []

    async def say(text: str) -> None:
        said.append(text)

    engine = _engine(handler)
    state = await engine.pull(REF, say)
    await engine.aclose()
    assert seen[0].url.path == "/v1.41/images/create"
    assert dict(seen[0].url.params) == {"fromImage": "127.0.0.1:5000/acme/env", "tag": "v1"}
    assert "x-registry-auth" not in seen[0].headers
    assert said[0] == f"Pulling {REF} ..."
    assert said[-1].startswith(f"Pulled {REF} (1 layers")
    assert state.digest == "sha256:" + "c" * 64


async def test_pull_by_digest_passes_the_digest_as_the_tag() -> None:
    digest = "sha256:" + "d" * 64
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"")

    async def say(text: str) -> None:
        pass

    await _engine(handler).pull(f"127.0.0.1:5000/acme/env@{digest}", say)
    assert seen[0].url.params["tag"] == digest


async def test_pull_errors_before_and_inside_the_stream_are_classified() -> None:
    async def say(text: str) -> None:
        pass

    def refused(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"message": "no basic auth credentials"})

    with pytest.raises(ImageNotPublic):
        await _engine(refused).pull(REF, say)

    def midway(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=_lines({"errorDetail": {"message": "manifest unknown"}, "error": "x"})
        )

    with pytest.raises(ImageNotFound):
        await _engine(midway).pull(REF, say)


async def test_a_failed_build_carries_the_log_tail() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["content-type"] == "application/x-tar"
        assert json.loads(request.url.params["labels"]) == {"k": "v"}
        return httpx.Response(
            200,
            content=_lines(
                {"stream": "Step 1/2 : FROM base\n"},
                {"stream": "E: Unable to locate package no-such-package\n"},
                {
                    "errorDetail": {"code": 100, "message": "returned a non-zero code: 100"},
                    "error": "returned a non-zero code: 100",
                },
            ),
        )

    said: list[str] = []

    async def say(text: str) -> None:
        said.append(text)

    with pytest.raises(BuildFailed) as caught:
        await _engine(handler).build(b"tar", tag="t:1", labels={"k": "v"}, progress=say)
    assert "failed: a step exited with code 100" in caught.value.message
    assert "Unable to locate package no-such-package" in caught.value.log_tail
    assert "Unable to locate package" in caught.value.message
    assert said[0] == "Step 1/2 : FROM base"
