"""Follow-up turns: a chat UI resends the whole conversation, and a reply of a run continues it.

How a reply names its run. Every run's answer ends with a visible line,
``_Jetty run [a1b2c3d4](…/trajectory/acme/analysis/a1b2c3d4)_``. Chat UIs keep what they show
and resend it as the assistant message of the next request, so the line comes back. Hidden
carriers do not: the ``jetty`` field of chunks, response ids and headers are not stored by the
UIs, reasoning blocks are stripped from the history they resend, and HTML comments or
zero-width characters are dropped by some renderers and sanitizers. The run id alone is not a
credential: a follow-up only continues a run of the collection the request is allowed to use.

What a run leaves to be continued (its trajectory's ``session``)::

    {"conversation": "<id of turn 1>", "turn": 2, "continues": "<id of turn 1>",
     "agent_session_id": "<the CLI's session id>", "home_blob": "<blob of the saved HOME>",
     "home_bytes": 12345, "continued_by": "<id of the latest turn that continued it>"}

At the end of every run the agent's HOME (where the CLIs keep their sessions) is archived into
a blob. A follow-up then runs in the same sandbox if it is still kept (see
:class:`KeptSandboxes`), else in a new one where the saved HOME, the previous run's result files
and its input files are put back first; either way the CLI resumes its session. A turn that
lands on another server than the one keeping the sandbox (several replicas behind a load
balancer) is restored there, and the keeping server releases its sandbox when it reads
``continued_by`` (see `proxy.runs.watch`).
"""

from __future__ import annotations

import io
import re
import tarfile
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from proxy.chatui.retrieval import message_text
from proxy.sandbox import FileContent, Sandbox
from proxy.store import Store
from proxy.store.blobs import BlobStore, file_source, read_all
from proxy.store.records import Trajectory
from proxy.store.redact import redact_bytes

MARKER_WORDS = "Jetty run"
# Key of a run's session naming the latest turn that continued it.
CONTINUED_BY = "continued_by"
_MARKER = re.compile(r"Jetty run \[?`?([0-9a-f]{8})\b")
# Paths inside a saved HOME that are not worth keeping (caches the CLIs rebuild).
_SKIP_PARTS = frozenset({".cache", ".npm", "node_modules"})


def marker_line(run_id: str, url: str) -> str:
    """The visible line that ends a run's answer and names the run."""
    return f"\n\n_{MARKER_WORDS} [{run_id}]({url})_\n"


def previous_run_id(messages: Sequence[Any]) -> str | None:
    """The run named by the latest assistant message that names one, or None."""
    for message in reversed(messages):
        if not isinstance(message, Mapping) or message.get("role") != "assistant":
            continue
        found = _MARKER.findall(message_text(message.get("content")))
        if found:
            return str(found[-1])
    return None


@dataclass(frozen=True)
class Continuation:
    """A run that continues an earlier one: what the engine needs to pick it up."""

    previous: Trajectory
    conversation: str
    turn: int
    agent_session_id: str | None
    home_blob: str | None

    @classmethod
    def of(cls, previous: Trajectory) -> Continuation:
        session = previous.session or {}
        agent_session = session.get("agent_session_id")
        home = session.get("home_blob")
        turn = session.get("turn")
        return cls(
            previous=previous,
            conversation=str(session.get("conversation") or previous.id),
            turn=(turn if isinstance(turn, int) else 1) + 1,
            agent_session_id=agent_session if isinstance(agent_session, str) else None,
            home_blob=home if isinstance(home, str) else None,
        )

    def session(self) -> dict[str, Any]:
        """The new run's ``session`` record before it has saved anything."""
        return {
            "conversation": self.conversation,
            "turn": self.turn,
            "continues": self.previous.id,
        }


async def mark_continued(store: Store, continuation: Continuation, run_id: str) -> None:
    """Record in the continued run's ``session`` that ``run_id`` continues it: a server that
    still keeps its sandbox (another one, since this server's was taken first) learns it
    from there and releases the sandbox. Nothing to mark where nothing was kept: a run that
    saved no session."""
    previous = continuation.previous
    if previous.session is not None:
        await store.update_trajectory(
            previous.id, session={**previous.session, CONTINUED_BY: run_id}
        )


def continued(trajectory: Trajectory) -> bool:
    """Whether a later turn has continued ``trajectory`` (see `mark_continued`)."""
    return bool((trajectory.session or {}).get(CONTINUED_BY))


def public_session(session: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A trajectory's ``session`` as the API shows it (no blob keys)."""
    if session is None:
        return None
    shown = {k: v for k, v in session.items() if k != "home_blob"}
    shown["saved_home"] = "home_blob" in session
    return shown


def pack_home(root: Path, secrets: Mapping[str, str] | None = None) -> bytes:
    """The files under ``root`` (copied out of the sandbox, so regular files only) as tar.gz,
    every occurrence of a value of ``secrets`` (``{name: value}``) replaced by its
    placeholder: an agent that printed one (its environment, say) must not leave it in a
    session that is kept."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=3) as archive:
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if path.is_file() and not path.is_symlink() and not _SKIP_PARTS & set(relative.parts):
                data = redact_bytes(path.read_bytes(), secrets or {})
                info = archive.gettarinfo(path, arcname=relative.as_posix())
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def unpack_home(data: bytes) -> dict[str, bytes]:
    """The regular files of a saved HOME by relative name (`Sandbox.put_files` checks names)."""
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for member in archive:
            if not member.isfile():
                continue
            extracted = archive.extractfile(member)
            if extracted is not None:
                files[member.name] = extracted.read()
    return files


async def restore(
    sandbox: Sandbox,
    continuation: Continuation,
    *,
    store: Store,
    blobs: BlobStore,
    home: str,
    inputs: Mapping[str, FileContent],
) -> list[str]:
    """Put back what the continued run left into a new sandbox: its saved ``home``, its result
    files and its ``inputs``; what was restored, for the stream."""
    restored: list[str] = []
    if continuation.home_blob:
        files = unpack_home(await read_all(blobs, continuation.home_blob))
        if files:
            await sandbox.put_files(home, files)
            restored.append("agent session")
    results = {
        artifact.path: await file_source(blobs, artifact.blob_key)
        for artifact in await store.list_artifacts(continuation.previous.id)
    }
    if results:
        await sandbox.put_files("/app/results", results)
        restored.append(f"{len(results)} result files")
    if inputs:
        await sandbox.put_files("/app/assets", inputs)
        restored.append(f"{len(inputs)} input files")
    return restored


@dataclass(frozen=True)
class SavedHome:
    blob_key: str
    size: int
    # Files left out for the caps.
    skipped: int


async def save_home(
    sandbox: Sandbox,
    *,
    blobs: BlobStore,
    home: str,
    max_bytes: int,
    max_files: int,
    secrets: Mapping[str, str] | None = None,
) -> SavedHome:
    """Archive the sandbox's ``home`` (the agent's session files) into a blob, with the
    values of ``secrets`` (the run's collection secrets) redacted."""
    with tempfile.TemporaryDirectory(prefix="jetty-home-") as scratch:
        report = await sandbox.copy_out(home, Path(scratch), max_bytes, max_files)
        data = await anyio.to_thread.run_sync(pack_home, Path(scratch), secrets)

    async def chunks() -> AsyncIterator[bytes]:
        yield data

    blob = await blobs.put(chunks())
    return SavedHome(blob.key, len(data), len(report.skipped))


@dataclass
class _Kept:
    sandbox: Sandbox
    image: str
    scope: anyio.CancelScope


class KeptSandboxes:
    """Sandboxes of finished runs kept for their follow-up turn, each for ``idle_seconds``.

    A sandbox is taken out at most once (the next turn owns it from then on); one that nobody
    takes in time is closed. ``close_all`` closes what is left when the server stops.
    """

    def __init__(self, task_group: TaskGroup, idle_seconds: float) -> None:
        self._tg = task_group
        self.idle_seconds = idle_seconds
        self._kept: dict[str, _Kept] = {}

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._kept

    def keep(self, run_id: str, sandbox: Sandbox, image: str) -> bool:
        """Keep ``sandbox`` for the run's follow-up; False (caller closes it) when disabled."""
        if self.idle_seconds <= 0 or run_id in self._kept:
            return False
        scope = anyio.CancelScope()
        try:
            self._tg.start_soon(self._expire, run_id, scope, name=f"kept-{run_id}")
        except RuntimeError:  # the server is stopping: nothing will take it
            return False
        self._kept[run_id] = _Kept(sandbox, image, scope)
        return True

    def run_ids(self) -> set[str]:
        """The runs whose sandboxes are kept now."""
        return set(self._kept)

    async def release(self, run_id: str) -> bool:
        """Close the kept sandbox of ``run_id`` (its run was continued elsewhere); False when
        there is none."""
        taken = self.take(run_id)
        if taken is None:
            return False
        with anyio.CancelScope(shield=True):
            await taken[0].close()
        return True

    def take(self, run_id: str) -> tuple[Sandbox, str] | None:
        """The kept sandbox of ``run_id`` and its image, now the caller's; None if there is none."""
        kept = self._kept.pop(run_id, None)
        if kept is None:
            return None
        kept.scope.cancel()
        return kept.sandbox, kept.image

    async def _expire(self, run_id: str, scope: anyio.CancelScope) -> None:
        with scope:
            await anyio.sleep(self.idle_seconds)
        kept = self._kept.get(run_id)
        if kept is not None and kept.scope is scope:
            del self._kept[run_id]
            with anyio.CancelScope(shield=True):
                await kept.sandbox.close()

    async def close_all(self) -> None:
        kept, self._kept = list(self._kept.values()), {}
        with anyio.CancelScope(shield=True):
            for item in kept:
                item.scope.cancel()
                await item.sandbox.close()
