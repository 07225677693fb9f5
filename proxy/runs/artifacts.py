"""Keeping what a run wrote to ``/app/results``: copied out, stored as blobs, recorded."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import anyio

from proxy.sandbox import CopyReport, Sandbox
from proxy.store import Store
from proxy.store.blobs import BlobStore
from proxy.store.content import detect_content_type

logger = logging.getLogger("proxy.runs")

RESULTS_DIR = "/app/results"


@dataclass(frozen=True)
class ResultLimits:
    max_bytes: int
    max_files: int


@dataclass
class CollectedArtifacts:
    """What was kept, and what was not (with why)."""

    files: list[dict[str, object]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def artifact_url(collection: str, task: str, run_id: str, path: str) -> str:
    """Download URL of one artifact, relative to the server root."""
    return f"/api/v1/trajectory/{quote(collection)}/{quote(task)}/{run_id}/artifacts/{quote(path)}"


async def collect_results(
    sandbox: Sandbox,
    store: Store,
    blobs: BlobStore,
    *,
    run_id: str,
    collection: str,
    task: str,
    limits: ResultLimits,
) -> CollectedArtifacts:
    """Copy the results directory out of ``sandbox`` and record each file as an artifact.

    Symlinks, special files and anything past the limits are skipped by the sandbox and
    listed in ``skipped``; a file that fails to store is logged and listed, never fatal.
    """
    collected = CollectedArtifacts()
    with tempfile.TemporaryDirectory(prefix="jetty-results-") as scratch:
        dest = Path(scratch)
        report: CopyReport = await sandbox.copy_out(
            RESULTS_DIR, dest, max_bytes=limits.max_bytes, max_files=limits.max_files
        )
        for skipped in report.skipped:
            collected.skipped.append({"path": skipped.path, "reason": str(skipped.reason)})
        for copied in report.files:
            source = dest / copied.path
            try:
                blob = await blobs.put(_read_file(source))
                content_type = detect_content_type(blob.head, copied.path)
                artifact, replaced = await store.add_artifact(
                    run_id, copied.path, blob, content_type
                )
                if replaced:
                    await blobs.delete(replaced)
            except Exception as exc:
                logger.exception("could not keep artifact %s of run %s", copied.path, run_id)
                collected.skipped.append({"path": copied.path, "reason": f"store failed: {exc}"})
                continue
            collected.files.append(
                {
                    "path": artifact.path,
                    "bytes": artifact.bytes,
                    "sha256": artifact.sha256,
                    "content_type": artifact.content_type,
                    "url": artifact_url(collection, task, run_id, artifact.path),
                }
            )
    return collected


async def _read_file(path: Path) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as handle:
        while chunk := await handle.read(1024 * 1024):
            yield chunk


def results_markdown(files: list[dict[str, object]]) -> str:
    """A short Markdown list of result files linked to their downloads (for chat UIs)."""
    if not files:
        return ""
    lines = ["", "", "**Result files**", ""]
    for item in files:
        lines.append(f"- [{item['path']}]({item['url']}) ({item['bytes']} bytes)")
    return "\n".join(lines) + "\n"
