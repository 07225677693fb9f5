"""Upstreams: which client serves a request, and what its failures become."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import httpx
import pytest

from proxy.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from proxy.relay import http1
from proxy.relay.upstream import UpstreamResponse, Upstreams
from proxy.settings import Settings
from tests.support.raw_http import CHUNKED, Seen, chunk, self_signed, serving

pytestmark = pytest.mark.anyio


def upstreams(url: str, tmp_path: Path, **overrides: object) -> Upstreams:
    fields: dict[str, object] = {
        "data_dir": tmp_path,
        "upstream_url": url + "/v1",
        "upstream_api_key": "sk-upstream",
    }
    fields.update(overrides)
    return Upstreams(Settings(**fields))  # type: ignore[arg-type]


async def answer(writer: asyncio.StreamWriter, seen: Seen, index: int) -> bool:
    """By the request body: a stream, an error, a broken stream or silence."""
    if seen.body == b"error":
        body = b'{"error": {"message": "slow down", "type": "rate_limit"}}'
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 2\r\nx-other: 1\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
    elif seen.body == b"broken":
        writer.write(CHUNKED + chunk(b"data: 1\n\n"))
        return False
    elif seen.body == b"silent":
        await asyncio.sleep(1)
    else:
        writer.write(CHUNKED + chunk(b"data: 1\n\n") + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    return True


async def read(response: UpstreamResponse) -> bytes:
    try:
        return await response.read()
    finally:
        await response.aclose()


async def test_a_plain_upstream_goes_through_the_fast_client(tmp_path: Path) -> None:
    async with serving(answer) as (server, url):
        client = upstreams(url, tmp_path)
        response = await client.send("gpt-x", "/chat/completions", b"{}")
        assert isinstance(response.response, http1.Response)
        assert await read(response) == b"data: 1\n\ndata: [DONE]\n\n"
        await client.aclose()
    head = server.seen[0].head.decode().lower()
    assert head.startswith("post /v1/chat/completions http/1.1")
    assert "authorization: bearer sk-upstream" in head
    assert "content-type: application/json" in head


async def test_failures_become_proxy_errors(tmp_path: Path) -> None:
    async with serving(answer) as (_, url):
        client = upstreams(url, tmp_path, upstream_read_timeout=0.2)
        with pytest.raises(UpstreamError) as rate_limited:
            await client.send("gpt-x", "/chat/completions", b"error")
        assert rate_limited.value.status_code == 429
        assert rate_limited.value.body()["error"]["message"] == "slow down"
        assert rate_limited.value.headers() == {"retry-after": "2"}

        with pytest.raises(UpstreamTimeout):
            await client.send("gpt-x", "/chat/completions", b"silent")

        response = await client.send("gpt-x", "/chat/completions", b"broken")
        assert await response.receive() == b"data: 1\n\n"
        with pytest.raises(UpstreamUnavailable, match="mid-response"):
            await response.receive()
        await response.aclose()
        await client.aclose()

    gone = upstreams(url, tmp_path)
    with pytest.raises(UpstreamUnavailable, match=r"Upstream unreachable \(127\.0\.0\.1\)"):
        await gone.send("gpt-x", "/chat/completions", b"{}")
    await gone.aclose()


async def test_a_proxy_from_the_environment_is_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    async with serving(answer) as (server, url):
        proxied = upstreams(url, tmp_path)
        # httpx takes the request, to a proxy that is not there.
        with pytest.raises(UpstreamUnavailable):
            await proxied.send("gpt-x", "/chat/completions", b"{}")
        await proxied.aclose()
        assert server.seen == []

        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        bypassed = upstreams(url, tmp_path)
        response = await bypassed.send("gpt-x", "/chat/completions", b"{}")
        assert isinstance(response.response, http1.Response)
        assert await read(response) == b"data: 1\n\ndata: [DONE]\n\n"
        await bypassed.aclose()


async def test_an_injected_transport_sees_every_request(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"openai-processing-ms": "7"}, content=b"data: [DONE]\n\n"
        )

    client = Upstreams(
        Settings(data_dir=tmp_path, upstream_url="http://upstream.invalid/v1"),
        transport=httpx.MockTransport(handler),
    )
    response = await client.send("gpt-x", "/chat/completions", b"{}")
    assert isinstance(response.response, httpx.Response)
    assert response.headers == {"openai-processing-ms": "7"}
    assert not response.complete
    assert await read(response) == b"data: [DONE]\n\n"
    await client.aclose()


async def test_tls_trusts_what_httpx_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed(tmp_path)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    async with serving(answer, tls=server_side) as (_, url):
        untrusted = upstreams(url, tmp_path)
        with pytest.raises(UpstreamUnavailable, match="ConnectError"):
            await untrusted.send("gpt-x", "/chat/completions", b"{}")
        await untrusted.aclose()

        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        trusted = upstreams(url, tmp_path)
        response = await trusted.send("gpt-x", "/chat/completions", b"{}")
        assert await read(response) == b"data: 1\n\ndata: [DONE]\n\n"
        await trusted.aclose()
