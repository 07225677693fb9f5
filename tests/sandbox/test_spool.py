"""Streamed contents saved to temporary files for one `put_files`, and removed after."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from proxy.sandbox.base import FileContent
from proxy.sandbox.spool import local_contents
from tests.support.blobs import StreamedBytes

pytestmark = pytest.mark.anyio


def _spools() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("jetty-put-*"))


async def test_streamed_contents_become_files_for_the_block(tmp_path: Path) -> None:
    host = tmp_path / "host.txt"
    host.write_bytes(b"on the host")
    before = _spools()
    files: dict[str, FileContent] = {
        "given": b"bytes",
        "host": host,
        "streamed": StreamedBytes((b"first ", b"", b"second")),
    }
    async with local_contents(files) as local:
        assert local["given"] == b"bytes" and local["host"] == host
        spooled = local["streamed"]
        assert isinstance(spooled, Path) and spooled.read_bytes() == b"first second"
        assert _spools() - before == {spooled.parent}
    assert _spools() == before


async def test_nothing_is_spooled_without_streamed_contents() -> None:
    before = _spools()
    async with local_contents({"a": b"x"}) as local:
        assert local == {"a": b"x"} and _spools() == before


async def test_a_failing_stream_leaves_no_spool() -> None:
    before = _spools()
    files: dict[str, FileContent] = {"s": StreamedBytes((b"part",) * 3, fail_after=2)}
    with pytest.raises(ConnectionResetError):
        async with local_contents(files):
            pytest.fail("the block must not run")
    assert _spools() == before
