"""Keeping what a run wrote to ``/app/results``: copied out, stored as blobs, recorded.

A result's path is kept, unless a URL, a zip or a terminal could not carry it (control
characters, bidirectional controls, bytes that are not UTF-8, a drive prefix): then the file
is kept under a portable name (:func:`~proxy.store.paths.portable_path`), made unique, and the
rename is recorded (``renamed_from`` on the artifact, and a warning for the run).
"""

from __future__ import annotations

import logging
import re
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
from proxy.store.paths import UnsafePath, portable_path, shown

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
    renamed: list[dict[str, str]] = field(default_factory=list)

    def warnings(self) -> list[str]:
        """What the run should be told about its results (names escaped for a terminal)."""
        said = []
        if self.renamed:
            names = ", ".join(f"{r['from']} as '{r['path']}'" for r in self.renamed[:20])
            said.append(
                "Some result files have names that links, zips or terminals cannot carry and"
                f" were kept under other names: {names}"
            )
        if self.skipped:
            names = ", ".join(f"{s['path']} ({s['reason']})" for s in self.skipped[:20])
            said.append(f"Some result files were not kept: {names}")
        return said


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
            collected.skipped.append({"path": shown(skipped.path), "reason": str(skipped.reason)})
        names = portable_names([copied.path for copied in report.files])
        for copied in report.files:
            name = names.get(copied.path)
            if name is None:
                collected.skipped.append({"path": shown(copied.path), "reason": "unusable name"})
                continue
            source = dest / copied.path
            try:
                blob = await blobs.put(_read_file(source))
                content_type = detect_content_type(blob.head, name)
                artifact, replaced = await store.add_artifact(run_id, name, blob, content_type)
                if replaced:
                    await blobs.delete(replaced)
            except Exception as exc:
                logger.exception("could not keep artifact %s of run %s", shown(name), run_id)
                collected.skipped.append({"path": shown(name), "reason": f"store failed: {exc}"})
                continue
            item: dict[str, object] = {
                "path": artifact.path,
                "bytes": artifact.bytes,
                "sha256": artifact.sha256,
                "content_type": artifact.content_type,
                "url": artifact_url(collection, task, run_id, artifact.path),
            }
            if name != copied.path:
                item["renamed_from"] = shown(copied.path)[1:-1]
                collected.renamed.append({"path": name, "from": shown(copied.path)})
            collected.files.append(item)
    return collected


def portable_names(paths: list[str]) -> dict[str, str | None]:
    """A portable, unique name for each result path (None: the file cannot be kept).

    Paths that need no change keep their names; the others take theirs, or the same with
    ``~2``, ``~3``… before the extension when a file or directory already has it.
    """
    portable: dict[str, str | None] = {}
    for path in paths:
        try:
            portable[path] = portable_path(path)
        except UnsafePath:
            portable[path] = None
    files: set[str] = set()
    dirs: set[str] = set()
    names: dict[str, str | None] = {}
    # Names that need nothing first: a renamed file never takes a name that was already there.
    for path in sorted(paths, key=lambda path: portable[path] != path):
        name = portable[path]
        if name is not None:
            name = _unique(name, files, dirs)
        if name is not None:
            files.add(name)
            parts = name.split("/")
            dirs.update("/".join(parts[:end]) for end in range(1, len(parts)))
        names[path] = name
    return names


def _unique(name: str, files: set[str], dirs: set[str]) -> str | None:
    parent, _, base = name.rpartition("/")
    parents = parent.split("/") if parent else []
    if any("/".join(parents[:end]) in files for end in range(1, len(parents) + 1)):
        return None  # a directory on the way has a file's name
    stem, dot, extension = base.rpartition(".")
    if not stem:
        stem, dot, extension = base, "", ""
    candidate, number = name, 1
    while candidate in files or candidate in dirs:
        number += 1
        candidate = f"{parent}/" if parent else ""
        candidate += f"{stem}~{number}{dot}{extension}"
    return candidate


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
        text = re.sub(r"([\\\[\]])", r"\\\1", str(item["path"]))  # brackets end a link text
        lines.append(f"- [{text}]({item['url']}) ({item['bytes']} bytes)")
    return "\n".join(lines) + "\n"
