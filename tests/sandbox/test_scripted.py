"""The scripted backend keeps the sandbox contract: states, files, caps, kills, reruns, orphans."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from proxy.sandbox import (
    ExitStatus,
    ImageNotFound,
    Orphans,
    SandboxError,
    SandboxSpec,
    SandboxStateError,
    UnsafePathError,
)
from proxy.sandbox.base import LABEL_OWNER, LABEL_SERVER, SkipReason
from proxy.sandbox.scripted import Pause, Script, ScriptedBackend, ScriptedSandbox

pytestmark = pytest.mark.anyio


def spec(run_id: str = "r1", **labels: str) -> SandboxSpec:
    return SandboxSpec(run_id=run_id, collection="acme", image="img", argv=["agent"], labels=labels)


async def test_a_script_prints_leaves_files_and_exits(tmp_path: Path) -> None:
    seen: list[dict[str, bytes]] = []

    def agent(sandbox: ScriptedSandbox) -> Script:
        seen.append(dict(sandbox.files))
        return Script(
            stdout=["one", Pause(0.01), "two"],
            exit_code=3,
            files={"/app/results/out.txt": b"out", "/app/results/deep/b.txt": b"bb"},
            stderr="oops",
        )

    backend = ScriptedBackend(agent)
    sandbox = await backend.launch(spec())
    await sandbox.put_files("/app/assets", {"in.txt": b"in"})
    await sandbox.start()
    with pytest.raises(SandboxStateError):
        await sandbox.put_files("/app", {"late.txt": b""})
    assert [line async for line in sandbox.stdout_lines()] == ["one", "two"]
    assert await sandbox.wait() == ExitStatus(3)
    assert sandbox.stderr_tail() == "oops"
    assert seen == [{"/app/assets/in.txt": b"in"}]
    report = await sandbox.copy_out("/app/results", tmp_path / "out", 10, 10)
    assert [(f.path, f.size) for f in report.files] == [("deep/b.txt", 2), ("out.txt", 3)]
    assert (tmp_path / "out" / "deep" / "b.txt").read_bytes() == b"bb"
    await sandbox.close()
    await sandbox.close()
    with pytest.raises(SandboxStateError):
        await sandbox.copy_out("/app/results", tmp_path / "again", 10, 10)


async def test_copy_out_keeps_to_the_caps(tmp_path: Path) -> None:
    files = {"/app/results/a.txt": b"aaaa", "/app/results/b.txt": b"bb", "/app/c.txt": b"c"}
    sandbox = await ScriptedBackend(lambda _: Script(files=files)).launch(spec())
    await sandbox.start()
    report = await sandbox.copy_out("/app/results", tmp_path, max_bytes=3, max_files=10)
    assert [f.path for f in report.files] == ["b.txt"]
    assert [(s.path, s.reason) for s in report.skipped] == [("a.txt", SkipReason.TOO_LARGE)]
    assert (await sandbox.copy_out("/nowhere", tmp_path / "x", 10, 10)).files == []


async def test_unsafe_names_are_refused() -> None:
    sandbox = await ScriptedBackend(lambda _: Script()).launch(spec())
    with pytest.raises(UnsafePathError):
        await sandbox.put_files("/app", {"../etc/passwd": b""})


async def test_a_hanging_script_runs_until_killed_or_timed_out() -> None:
    backend = ScriptedBackend(lambda _: Script(stdout=["started"], hang=True))
    waited = await backend.launch(spec("waited"))
    await waited.start()
    status = await waited.wait(timeout=0.05)
    assert (status.exit_code, status.timed_out, waited.killed) == (137, True, True)

    read = await backend.launch(spec("read"))
    await read.start()
    lines: list[str] = []
    first = anyio.Event()

    async def follow() -> None:
        async for line in read.stdout_lines():
            lines.append(line)
            first.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(follow)
        await first.wait()
        assert read.running  # its stdout stays open
        await read.kill()
    assert lines == ["started"]
    assert await read.wait() == ExitStatus(137)


async def test_a_kill_ends_a_pause() -> None:
    sandbox = await ScriptedBackend(lambda _: Script(stdout=[Pause(60), "never"])).launch(spec())
    await sandbox.start()
    async with anyio.create_task_group() as tg:
        tg.start_soon(sandbox.kill)
        assert [line async for line in sandbox.stdout_lines()] == []
    assert (await sandbox.wait()).exit_code == 137


async def test_rerun_keeps_the_files_and_plays_a_new_script() -> None:
    turns: list[tuple[list[str], dict[str, str]]] = []

    def agent(sandbox: ScriptedSandbox) -> Script:
        turns.append((list(sandbox.spec.argv), dict(sandbox.spec.env)))
        return Script(stdout=[f"turn {len(turns)}"], files={f"/app/{len(turns)}.txt": b"x"})

    sandbox = await ScriptedBackend(agent).launch(spec())
    with pytest.raises(SandboxStateError):
        await sandbox.wait()
    await sandbox.start()
    with pytest.raises(SandboxStateError):
        await sandbox.rerun(["again"], {})  # still running: its output was not read
    assert await sandbox.wait() == ExitStatus(0)
    await sandbox.rerun(["again"], {"A": "1"})
    await sandbox.put_files("/app", {"between.txt": b"y"})
    await sandbox.start()
    assert [line async for line in sandbox.stdout_lines()] == ["turn 2"]
    assert turns == [(["agent"], {}), (["again"], {"A": "1"})]
    assert set(sandbox.files) == {"/app/1.txt", "/app/between.txt", "/app/2.txt"}
    await sandbox.close()
    with pytest.raises(SandboxStateError):
        await sandbox.rerun(["late"], {})


async def test_missing_images_and_failing_starts() -> None:
    def broken(sandbox: ScriptedSandbox) -> Script:
        raise SandboxError("the engine fell over")

    backend = ScriptedBackend(broken, images={"img"})
    with pytest.raises(ImageNotFound):
        await backend.check_image("other")
    with pytest.raises(ImageNotFound):
        await backend.launch(SandboxSpec(run_id="r", collection="c", image="other", argv=["a"]))
    sandbox = await backend.launch(spec())
    with pytest.raises(SandboxError, match="fell over"):
        await sandbox.start()


async def test_remove_orphans_goes_by_owner_run_and_server() -> None:
    backend = ScriptedBackend(lambda _: Script())
    for run_id, owner, server in [
        ("mine-live", "me", "alive"),
        ("mine-gone", "me", "dead"),
        ("kept", "me", "dead"),
        ("theirs", "other", "dead"),
    ]:
        await backend.launch(spec(run_id, **{LABEL_OWNER: owner, LABEL_SERVER: server}))
    closed = await backend.launch(spec("closed", **{LABEL_OWNER: "me"}))
    await closed.close()
    removed = await backend.remove_orphans(Orphans({"kept"}, "me", {"alive"}))
    assert removed == ["mine-gone"]
    assert [s.run_id for s in backend.open_sandboxes] == ["mine-live", "kept", "theirs"]
