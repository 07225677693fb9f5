"""The proxy's side of a Pod's files, on a real server: the run's token, only while open."""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.applications import Starlette

from proxy.sandbox.base import SandboxStateError
from proxy.sandbox.kube_exchange import SandboxExchange
from tests.support.live import serve_here

pytestmark = pytest.mark.anyio

TOKEN = "jrt-run-token-0123456789"
PREFIX = "/jetty/sandbox/v1"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[SandboxExchange, httpx.AsyncClient]]:
    exchange = SandboxExchange(tmp_path, part_max_bytes=1000, poll_seconds=0.2)
    async with (
        serve_here(Starlette(routes=exchange.routes())) as url,
        httpx.AsyncClient(base_url=url + PREFIX, timeout=10) as client,
    ):
        yield exchange, client


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_only_an_open_sandboxs_token_is_taken(
    served: tuple[SandboxExchange, httpx.AsyncClient],
) -> None:
    exchanges, client = served
    assert (await client.get("/inputs", headers=bearer())).status_code == 401
    exchange = exchanges.open(TOKEN)
    with pytest.raises(SandboxStateError):
        exchanges.open(TOKEN)  # one sandbox per run at a time
    inputs = await client.get("/inputs", headers=bearer())
    assert inputs.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(inputs.content)) as tar:
        assert tar.getmembers() == []  # nothing put yet: an empty archive
    for refused in ({}, bearer("jrt-another"), {"Authorization": TOKEN}):
        assert (await client.get("/inputs", headers=refused)).status_code == 401
    exchanges.close(exchange)
    assert not exchange.directory.exists()
    for path in ("/inputs", "/stop"):
        assert (await client.get(path, headers=bearer())).status_code == 401
    outputs = await client.post("/outputs?part=results", headers=bearer(), content=b"x")
    assert outputs.status_code == 401


async def test_stop_is_a_long_poll(
    served: tuple[SandboxExchange, httpx.AsyncClient], tmp_path: Path
) -> None:
    exchanges, client = served
    exchanges.open(TOKEN)
    assert (await client.get("/stop", headers=bearer())).text == ""  # the poll timed out
    # A poll that would outlast the test is answered at the stop.
    patient = SandboxExchange(tmp_path, poll_seconds=30)
    exchange = patient.open(TOKEN)
    said: list[str] = []
    async with serve_here(Starlette(routes=patient.routes())) as url:

        async def poll() -> None:
            async with httpx.AsyncClient(timeout=10) as polling:
                said.append((await polling.get(url + PREFIX + "/stop", headers=bearer())).text)

        async with anyio.create_task_group() as group:
            group.start_soon(poll)
            await anyio.sleep(0.2)
            exchange.stop.set()
    assert said == ["stop"]


async def test_outputs_are_kept_capped_and_finished_by_stderr(
    served: tuple[SandboxExchange, httpx.AsyncClient],
) -> None:
    exchanges, client = served
    exchange = exchanges.open(TOKEN)
    kept = await client.post("/outputs?part=results", headers=bearer(), content=b"r" * 10)
    assert kept.status_code == 200
    too_large = await client.post("/outputs?part=home", headers=bearer(), content=b"h" * 5000)
    assert too_large.status_code == 413
    assert exchange.too_large == {"home"}
    assert (await client.post("/outputs?part=x", headers=bearer())).status_code == 400
    assert not exchange.finished.is_set()
    await client.post("/outputs?part=stderr", headers=bearer(), content=b"oops\n")
    assert exchange.finished.is_set()
    assert exchange.parts["results"].read_bytes() == b"r" * 10
    assert exchange.parts["stderr"].read_bytes() == b"oops\n"


async def test_a_part_cut_off_is_not_kept(
    served: tuple[SandboxExchange, httpx.AsyncClient],
) -> None:
    exchanges, client = served
    exchange = exchanges.open(TOKEN)
    url = httpx.URL(str(client.base_url))
    stream = await anyio.connect_tcp(url.host, url.port or 80)
    async with stream:
        await stream.send(
            f"POST {PREFIX}/outputs?part=results HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: 500\r\n\r\n".encode()
            + b"half"
        )
    with anyio.fail_after(10):
        while (exchange.directory / "out-results").exists() is False:
            await anyio.sleep(0.01)
        await anyio.sleep(0.2)
    assert "results" not in exchange.parts
