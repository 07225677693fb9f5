"""Streamed file contents (`StreamedFile`) made local for the backends, which read host files.

Each streamed content is written chunk by chunk to a private temporary directory for the
length of one `put_files` call, so it is never whole in memory; the directory is removed
afterwards, also on failure or cancellation.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.to_thread

from proxy.sandbox.base import FileContent, StreamedFile


@asynccontextmanager
async def local_contents(
    files: Mapping[str, FileContent],
) -> AsyncIterator[dict[str, bytes | Path]]:
    """``files`` with every streamed content saved to a temporary file for the block; bytes
    and host paths pass through untouched."""
    local: dict[str, bytes | Path] = {}
    streamed: dict[str, StreamedFile] = {}
    for name, content in files.items():
        if isinstance(content, bytes | Path):
            local[name] = content
        else:
            streamed[name] = content
    if not streamed:
        yield local
        return
    directory = Path(await anyio.to_thread.run_sync(tempfile.mkdtemp, None, "jetty-put-"))
    try:
        for index, (name, content) in enumerate(streamed.items()):
            path = directory / str(index)
            await _save(content, path)
            local[name] = path
        yield local
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(shutil.rmtree, directory, True)


async def _save(content: StreamedFile, path: Path) -> None:
    chunks = await content.open()
    try:
        async with await anyio.open_file(path, "xb") as out:
            async for chunk in chunks:
                await out.write(chunk)
    finally:
        # An abandoned stream lets go of its connection or file now, not when collected.
        if isinstance(chunks, AsyncGenerator):
            await chunks.aclose()
