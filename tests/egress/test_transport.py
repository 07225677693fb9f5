"""The guarded transport against real loopback servers: every spelling of an internal host is
refused before a connection, redirects are checked at each hop, allowed hosts work, and the
connection goes to the address that was checked while the URL's name stays in Host and TLS."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from proxy.egress import AddressPolicy, AddressRefused, GuardedTransport
from proxy.egress.addresses import IPAddress
from proxy.egress.transport import Resolver, resolve
from tests.support.raw_http import RawServer, Seen, self_signed, serving

pytestmark = pytest.mark.anyio


def _host(seen: Seen) -> str:
    for line in seen.head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"host":
            return value.strip().decode()
    return ""


def _path(seen: Seen) -> str:
    return seen.head.split(b" ")[1].decode()


async def _answer(writer: asyncio.StreamWriter, seen: Seen, index: int) -> bool:
    """``/go?to=URL`` redirects there; anything else answers with its path."""
    path = _path(seen)
    if path.startswith("/go?to="):
        location = path.removeprefix("/go?to=").encode()
        writer.write(b"HTTP/1.1 302 Found\r\nlocation: %s\r\ncontent-length: 0\r\n\r\n" % location)
    else:
        body = f"served {path}".encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    return True


@pytest.fixture
async def server() -> AsyncIterator[tuple[RawServer, int]]:
    async with serving(_answer) as (raw, url):
        yield raw, int(url.rsplit(":", 1)[1])


def _client(
    *allow: str, resolver: Resolver = resolve, verify: ssl.SSLContext | bool = True
) -> httpx.AsyncClient:
    policy = AddressPolicy.from_entries(allow)
    transport = GuardedTransport(policy, resolver=resolver, verify=verify)
    return httpx.AsyncClient(transport=transport, follow_redirects=True, trust_env=False)


LOOPBACK_SPELLINGS = [
    "http://127.0.0.1:{port}/metrics",
    "http://localhost:{port}/",
    "http://LOCALHOST:{port}/",
    "http://2130706433:{port}/",
    "http://0x7f.1:{port}/",
    "http://0x7f000001:{port}/",
    "http://017700000001:{port}/",
    "http://127.1:{port}/",
    "http://127.0.0.2:{port}/",
    "http://[::1]:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://[::ffff:7f00:1]:{port}/",
    "http://[64:ff9b::7f00:1]:{port}/",
    "http://0.0.0.0:{port}/",
    "http://0:{port}/",
]


@pytest.mark.parametrize("template", LOOPBACK_SPELLINGS)
async def test_every_spelling_of_loopback_is_refused_before_connecting(
    server: tuple[RawServer, int], template: str
) -> None:
    raw, port = server
    async with _client() as client:
        with pytest.raises(AddressRefused, match="address"):
            await client.get(template.format(port=port))
    assert raw.connections == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://192.168.0.1/",
        "http://172.16.0.1/",
        "http://100.64.0.1/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
        "http://224.0.0.1/",
        "http://[ff02::1]/",
    ],
)
async def test_private_link_local_and_multicast_are_refused(url: str) -> None:
    async with _client() as client:
        with pytest.raises(AddressRefused):
            await client.get(url)


async def test_an_allowed_address_is_reached(server: tuple[RawServer, int]) -> None:
    raw, port = server
    async with _client("127.0.0.1") as client:
        response = await client.get(f"http://127.0.0.1:{port}/runbook.md")
    assert response.text == "served /runbook.md"
    assert _host(raw.seen[0]) == f"127.0.0.1:{port}"
    # An allowed address is allowed under any name that leads to it.
    async with _client("127.0.0.1") as client:
        assert (await client.get(f"http://2130706433:{port}/x")).text == "served /x"


async def test_an_allowed_name_is_reached(server: tuple[RawServer, int]) -> None:
    _, port = server

    async def runbooks_corp(host: str, port: int) -> list[IPAddress]:
        return await resolve("127.0.0.1" if host == "runbooks.corp" else host, port)

    async with _client("runbooks.corp", resolver=runbooks_corp) as client:
        response = await client.get(f"http://runbooks.corp:{port}/r.md")
        assert response.text == "served /r.md"
        with pytest.raises(AddressRefused):
            await client.get(f"http://127.0.0.1:{port}/r.md")


async def test_a_redirect_to_loopback_is_refused_at_that_hop(server: tuple[RawServer, int]) -> None:
    raw, port = server

    async def public_name(host: str, port: int) -> list[IPAddress]:
        return await resolve("127.0.0.1" if host == "runbooks.corp" else host, port)

    target = f"http://localhost:{port}/secret"
    async with _client("runbooks.corp", resolver=public_name) as client:
        with pytest.raises(AddressRefused):
            await client.get(f"http://runbooks.corp:{port}/go?to={target}")
        with pytest.raises(AddressRefused, match="scheme 'file'"):
            await client.get(f"http://runbooks.corp:{port}/go?to=file:///etc/passwd")
    assert [_path(seen) for seen in raw.seen] == [f"/go?to={target}", "/go?to=file:///etc/passwd"]


async def test_the_checked_address_is_the_one_connected_to(
    server: tuple[RawServer, int],
) -> None:
    raw, port = server
    lookups: list[str] = []

    async def once(host: str, port: int) -> list[IPAddress]:
        # The system resolver knows no such name: only a connection to the address this
        # lookup gave can succeed, never one to a second lookup's answer.
        lookups.append(host)
        return await resolve("127.0.0.1", port)

    async with _client("127.0.0.1", resolver=once) as client:
        response = await client.get(f"http://rebind.invalid:{port}/pinned")
    assert response.text == "served /pinned"
    assert lookups == ["rebind.invalid"]
    assert _host(raw.seen[0]) == f"rebind.invalid:{port}"


async def test_tls_checks_the_urls_name_on_the_pinned_connection(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "runbooks.corp")
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    trusted = ssl.create_default_context(cafile=str(cert))

    async def to_loopback(host: str, port: int) -> list[IPAddress]:
        return await resolve("127.0.0.1", port)

    async with serving(_answer, tls=server_side) as (raw, url):
        port = int(url.rsplit(":", 1)[1])
        async with _client("runbooks.corp", resolver=to_loopback, verify=trusted) as client:
            response = await client.get(f"https://runbooks.corp:{port}/tls")
        assert response.text == "served /tls"
        assert _host(raw.seen[0]) == f"runbooks.corp:{port}"
        # The certificate names runbooks.corp: another name on the same address fails.
        async with _client("other.corp", resolver=to_loopback, verify=trusted) as client:
            with pytest.raises(httpx.ConnectError, match="certificate"):
                await client.get(f"https://other.corp:{port}/tls")
