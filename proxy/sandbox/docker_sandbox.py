"""One Docker container as a `~proxy.sandbox.base.Sandbox`, driven over the Engine API.

``PUT .../archive`` for `put_files` → ``POST .../start`` → ``GET .../logs?follow=1``
demultiplexed into stdout lines and a stderr tail → ``POST .../wait`` (on timeout ``POST
.../kill``) → ``GET .../archive`` for `copy_out` → ``DELETE /containers/{id}?force=1``. The
backend (`proxy.sandbox.docker`) creates it.

`rerun` restarts the exited container with a script its dispatcher sources (see the backend);
a claimed warm container gets its first command the same way, through its claim's FIFO.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import IO

import anyio
import anyio.to_thread

from proxy.sandbox.base import (
    CopyReport,
    EngineUnavailable,
    ExitStatus,
    FileContent,
    SandboxError,
    SandboxSpec,
    SandboxStateError,
)
from proxy.sandbox.claims import ClaimChannel
from proxy.sandbox.dockerapi import Engine, path_stat_name
from proxy.sandbox.files import ArchiveExtractor, CopyBudget, clean_absolute_dir
from proxy.sandbox.files import clean_relative_path as _clean
from proxy.sandbox.frames import FrameDecoder, LineSplitter, StreamKind, TailBuffer
from proxy.sandbox.shell import claim_script, exec_script
from proxy.sandbox.spool import local_contents
from proxy.sandbox.tarstream import Owner, TarFormatError, write_archive
from proxy.sandbox.warm import Takeover

__all__ = ["RERUN_SCRIPT", "DockerSandbox", "engine_timestamp", "exec_script"]

logger = logging.getLogger("proxy.sandbox.docker")

_CLOSE_TIMEOUT = 30.0
_KILL_WAIT = 30.0
_UPLOAD_CHUNK = 256 * 1024
# Bytes of archive read past max_bytes (to list the files skipped for size) before giving up.
_ARCHIVE_SLACK = 256 * 1024 * 1024
# Inside the container, not on the host.
_RERUN_DIR, _RERUN_NAME = "/tmp", ".jetty-rerun"  # noqa: S108
RERUN_SCRIPT = f"{_RERUN_DIR}/{_RERUN_NAME}"


class DockerSandbox:
    """One container. Create with `DockerBackend.launch` (or claim a `DockerWarmSandbox`).

    With ``claim``, the container is a claimed warm one, already running its dispatcher:
    `start` hands it the spec's command and environment through the claim's FIFO.
    """

    def __init__(
        self,
        engine: Engine,
        container_id: str,
        spec: SandboxSpec,
        *,
        archive_slack_bytes: int = _ARCHIVE_SLACK,
        claim: ClaimChannel | None = None,
        standby: bool = False,
        takeover: Takeover | None = None,
    ) -> None:
        self._engine = engine
        self.container_id = container_id
        self._spec = spec
        self._claim = claim
        self._standby = standby
        self._takeover = takeover
        self._url = f"/containers/{container_id}"
        self._owner = _numeric_owner(spec.user)
        self._slack = archive_slack_bytes
        self._stderr = TailBuffer()
        self._started = False
        self._logs_taken = False
        # Engine log timestamp ("seconds.nanoseconds") the current process's output starts at.
        self._since: str | None = None
        self._closing = False  # set first thing in close(): a broken log stream is expected
        self._closed = False

    @property
    def run_id(self) -> str:
        return self._spec.run_id

    async def put_files(self, dest_dir: str, files: Mapping[str, FileContent]) -> None:
        if self._started or self._closed:
            raise SandboxStateError("put_files is only possible before start")
        dest = clean_absolute_dir(dest_dir)
        names = {name: _clean(name) for name in files}
        # Upload at the deepest directory that exists: a tar entry for an existing directory
        # would reset its owner and mode (think /tmp), so only missing ones go in the tar.
        base, missing = dest, PurePosixPath()
        while base != base.parent and not await self._exists(base):
            missing = PurePosixPath(base.name) / missing
            base = base.parent
        dirs = [missing] if missing.parts else []
        async with local_contents(files) as contents:
            members = {missing / names[name]: content for name, content in contents.items()}
            await self._upload(base, dirs, members)

    async def _upload(
        self,
        base: PurePosixPath,
        dirs: list[PurePosixPath],
        members: dict[PurePosixPath, bytes | Path],
    ) -> None:
        spool = await anyio.to_thread.run_sync(self._spool_archive, dirs, members)
        try:
            await self._engine.request(
                "PUT",
                f"{self._url}/archive",
                params={"path": str(base), "noOverwriteDirNonDir": "1"},
                headers={"Content-Type": "application/x-tar"},
                content=_read_chunks(spool),
                timeout=None,
            )
        finally:
            spool.close()

    def _spool_archive(
        self, dirs: list[PurePosixPath], members: dict[PurePosixPath, bytes | Path]
    ) -> IO[bytes]:
        spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)  # noqa: SIM115 - returned
        try:
            write_archive(spool, dirs, members, self._owner)
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return spool

    async def claim_workdir(self) -> None:
        """Give the workdir to a numeric non-root ``spec.user``.

        The engine creates the workdir owned by root when the container is created, which
        would leave a non-root agent unable to write in its own /app.
        """
        workdir = clean_absolute_dir(self._spec.workdir)
        if self._owner == Owner() or workdir == workdir.parent:
            return
        await self._upload(workdir.parent, [PurePosixPath(workdir.name)], {})

    async def _exists(self, path: PurePosixPath) -> bool:
        response = await self._engine.request(
            "HEAD", f"{self._url}/archive", params={"path": str(path)}, ok=(404,)
        )
        return response.status_code != 404

    async def start(self) -> None:
        if self._closed:
            raise SandboxStateError("the sandbox is closed")
        if self._started:
            raise SandboxStateError("the sandbox was already started")
        self._started = True
        if self._claim is not None and self._claim.connected:
            script = claim_script(
                self._spec.argv, self._spec.env, standby=self._standby, takeover=self._takeover
            )
            await self._claim.send(script.encode())
            return
        await self._engine.request("POST", f"{self._url}/start", ok=(304,))

    async def stdout_lines(self) -> AsyncGenerator[str, None]:
        if not self._started:
            raise SandboxStateError("start the sandbox before reading its output")
        if self._logs_taken:
            raise SandboxStateError("stdout_lines can be iterated only once")
        self._logs_taken = True
        lines = LineSplitter()
        seen = {StreamKind.STDOUT: 0, StreamKind.STDERR: 0}
        try:
            async with aclosing(self._log_frames(follow=True)) as frames:
                async for stream, payload in frames:
                    seen[stream] += len(payload)
                    for line in self._route(stream, payload, lines):
                        yield line
            if self._closing:
                return
            # The engine can end a follow stream before it has written the container's last
            # output (seen with Docker 20.10). Once the container has exited its log is
            # complete: read it again and pass on what the follow stream did not deliver.
            await self._wait_exit()
            async with aclosing(self._log_frames(follow=False)) as frames:
                async for stream, payload in frames:
                    skip = min(seen[stream], len(payload))
                    seen[stream] -= skip
                    for line in self._route(stream, payload[skip:], lines):
                        yield line
        except SandboxError:
            if self._closing:
                return  # the stream broke because the container was removed under it
            raise
        for line in lines.flush():
            yield line

    async def _log_frames(self, *, follow: bool) -> AsyncGenerator[tuple[StreamKind, bytes], None]:
        params = {"follow": "1" if follow else "0", "stdout": "1", "stderr": "1"}
        if self._since is not None:
            params["since"] = self._since
        decoder = FrameDecoder()
        async with self._engine.stream(
            "GET", f"{self._url}/logs", params=params, timeout=None
        ) as response:
            async for chunk in response.aiter_bytes():
                for stream, payload in decoder.feed(chunk):
                    yield stream, payload

    def _route(self, stream: StreamKind, payload: bytes, lines: LineSplitter) -> list[str]:
        if stream is StreamKind.STDERR:
            self._stderr.feed(payload)
            return []
        return lines.feed(payload) if stream is StreamKind.STDOUT else []

    def stderr_tail(self) -> str:
        return self._stderr.text()

    async def wait(self, timeout: float | None = None) -> ExitStatus:  # noqa: ASYNC109
        if not self._started:
            raise SandboxStateError("start the sandbox before waiting for it")
        timed_out = False
        with anyio.move_on_after(timeout) as scope:
            await self._wait_exit()
        if scope.cancelled_caught:
            timed_out = True
            await self.kill()
            with anyio.move_on_after(_KILL_WAIT) as kill_scope:
                await self._wait_exit()
            if kill_scope.cancelled_caught:
                raise EngineUnavailable(
                    f"container {self.container_id} still runs {_KILL_WAIT:.0f}s after a kill"
                )
        state = (await self._engine.request("GET", f"{self._url}/json")).json()["State"]
        if not self._logs_taken:
            await self._fetch_stderr()
        return ExitStatus(
            exit_code=int(state.get("ExitCode", -1)),
            oom_killed=bool(state.get("OOMKilled", False)),
            timed_out=timed_out,
        )

    async def _wait_exit(self) -> None:
        await self._engine.request(
            "POST", f"{self._url}/wait", params={"condition": "not-running"}, timeout=None
        )

    async def _fetch_stderr(self) -> None:
        params = {"stderr": "1", "tail": "200"}
        if self._since is not None:
            params["since"] = self._since
        response = await self._engine.request("GET", f"{self._url}/logs", params=params)
        decoder = FrameDecoder()
        for stream, payload in decoder.feed(response.content):
            if stream is StreamKind.STDERR:
                self._stderr.feed(payload)

    async def kill(self) -> None:
        if self._closed or not self._started:
            return
        # 409: not running; 404: already gone. Both mean there is nothing left to kill.
        await self._engine.request("POST", f"{self._url}/kill", ok=(404, 409))

    async def copy_out(
        self, src_dir: str, dest: Path, max_bytes: int, max_files: int
    ) -> CopyReport:
        if self._closed:
            raise SandboxStateError("the sandbox is closed")
        src = clean_absolute_dir(src_dir)
        budget = CopyBudget(max_bytes, max_files)
        await anyio.Path(dest).mkdir(parents=True, exist_ok=True)
        async with self._engine.stream(
            "GET", f"{self._url}/archive", params={"path": str(src)}, ok=(404,), timeout=None
        ) as response:
            if response.status_code == 404:
                return budget.report
            root = path_stat_name(response) or src.name
            extractor = ArchiveExtractor(dest, budget, root, max_bytes + self._slack)
            try:
                async for chunk in response.aiter_bytes():
                    await anyio.to_thread.run_sync(extractor.feed, chunk)
                    if extractor.stopped:
                        break
                extractor.close()
            except TarFormatError as exc:
                raise SandboxError(f"unreadable archive of {src} from the engine: {exc}") from exc
        return budget.report

    async def rerun(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        if self._closed:
            raise SandboxStateError("the sandbox is closed")
        if not argv:
            raise SandboxStateError("argv must name a program to run")
        script = exec_script(
            argv, env, before=[f"rm -f {RERUN_SCRIPT}"], unset=list(self._spec.env)
        )
        since = None
        if self._started:
            state = (await self._engine.request("GET", f"{self._url}/json")).json()["State"]
            if state.get("Running") or state.get("Restarting"):
                raise SandboxStateError("the sandbox's process is still running")
            since = engine_timestamp(str(state.get("FinishedAt") or ""))
        self._started = False
        self._logs_taken = False
        self._stderr = TailBuffer()
        self._since = since
        self._spec = dataclasses.replace(self._spec, argv=list(argv), env=dict(env))
        await self.put_files(_RERUN_DIR, {_RERUN_NAME: script.encode()})

    async def close(self) -> None:
        if self._closed:
            return
        self._closing = True
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
            try:
                # 409 means a removal is already in progress.
                await self._engine.request(
                    "DELETE", self._url, params={"force": "1", "v": "1"}, ok=(404, 409)
                )
            except SandboxError as exc:
                # Do not mask the caller's own error; remove_orphans catches what leaks here.
                logger.warning("could not remove container %s: %s", self.container_id, exc)
                return
            self._closed = True
            if self._claim is not None:
                await anyio.to_thread.run_sync(self._claim.remove)


def engine_timestamp(rfc3339: str) -> str | None:
    """``2026-11-27T16:05:01.123456789Z`` as the engine's ``since`` form, ``1795795501.123456789``.

    Nanoseconds are kept (datetime stops at microseconds, and a rounded value could let the
    previous process's last lines through). None for the zero time or an unreadable value.
    """
    match = re.fullmatch(
        r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", rfc3339
    )
    if match is None or rfc3339.startswith("0001-"):
        return None
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    seconds = int(datetime.fromisoformat(match.group(1) + zone).timestamp())
    return f"{seconds}.{(match.group(2) or '').ljust(9, '0')}"


def _numeric_owner(user: str | None) -> Owner:
    if not user:
        return Owner()
    uid, _, gid = user.partition(":")
    if uid.isdigit() and (not gid or gid.isdigit()):
        return Owner(int(uid), int(gid or uid))
    return Owner()


async def _read_chunks(spool: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := await anyio.to_thread.run_sync(spool.read, _UPLOAD_CHUNK):
        yield chunk
