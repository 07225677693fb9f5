"""Follow-up turns: finding the run a conversation continues, saving a HOME, keeping sandboxes."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import anyio
import pytest

from proxy.runs.followup import (
    KeptSandboxes,
    marker_line,
    pack_home,
    previous_run_id,
    public_session,
    unpack_home,
)
from proxy.sandbox import SandboxSpec, Script, ScriptedBackend, ScriptedSandbox

pytestmark = pytest.mark.anyio


def test_the_marker_line_is_found_again_in_the_resent_history() -> None:
    answer = "Done.\n\n**Result files**\n\n- [a.txt](http://x/a.txt)" + marker_line(
        "0a1b2c3d", "http://proxy/api/v1/trajectory/acme/chat/0a1b2c3d"
    )
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "and now?"},
    ]
    assert previous_run_id(messages) == "0a1b2c3d"


def test_the_latest_assistant_reply_wins_and_user_text_is_ignored() -> None:
    messages: list[Any] = [
        {"role": "assistant", "content": "_Jetty run [11111111](u)_"},
        {"role": "assistant", "content": [{"type": "text", "text": "_Jetty run [22222222](u)_"}]},
        {"role": "assistant", "content": "a reply without a run"},
        {"role": "user", "content": "Jetty run [33333333]"},
        "not a message",
    ]
    assert previous_run_id(messages) == "22222222"


@pytest.mark.parametrize(
    "content",
    [
        "Jetty run 0a1b2c3d",  # a UI that resends the text without the link
        "_Jetty run [`0a1b2c3d`](u)_",
    ],
)
def test_the_marker_survives_lost_formatting(content: str) -> None:
    assert previous_run_id([{"role": "assistant", "content": content}]) == "0a1b2c3d"


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "assistant", "content": None}],
        [{"role": "assistant", "content": "Jetty run [0a1b2c3d0]"}],  # not an id
        [{"role": "assistant", "content": "jetty run [0a1b2c3d]"}],  # not the marker
        [{"role": "system", "content": "_Jetty run [0a1b2c3d](u)_"}],
    ],
)
def test_no_marker_no_continuation(messages: list[Any]) -> None:
    assert previous_run_id(messages) is None


def test_home_round_trip_skips_caches(tmp_path: Path) -> None:
    (tmp_path / ".claude" / "projects" / "-app").mkdir(parents=True)
    (tmp_path / ".claude" / "projects" / "-app" / "s.jsonl").write_bytes(b'{"a":1}\n')
    (tmp_path / ".claude.json").write_text("{}")
    (tmp_path / ".cache" / "x").mkdir(parents=True)
    (tmp_path / ".cache" / "x" / "big").write_bytes(b"0" * 1000)
    files = unpack_home(pack_home(tmp_path))
    assert files == {".claude/projects/-app/s.jsonl": b'{"a":1}\n', ".claude.json": b"{}"}


def test_saved_home_has_the_collection_secrets_redacted(tmp_path: Path) -> None:
    (tmp_path / ".codex" / "sessions").mkdir(parents=True)
    transcript = b'{"output":"DEPLOY_TOKEN=tok-123456 HOST=db.example"}\n'
    (tmp_path / ".codex" / "sessions" / "s.jsonl").write_bytes(transcript)
    (tmp_path / "notes.txt").write_bytes(b"no secret here")
    (tmp_path / "state.bin").write_bytes(b"\xff\x00tok-123456\xfe")  # not UTF-8
    files = unpack_home(pack_home(tmp_path, {"DEPLOY_TOKEN": "tok-123456", "SHORT": "abc"}))
    redacted = b'{"output":"DEPLOY_TOKEN=[redacted:DEPLOY_TOKEN] HOST=db.example"}\n'
    assert files == {
        ".codex/sessions/s.jsonl": redacted,
        "notes.txt": b"no secret here",
        "state.bin": b"\xff\x00[redacted:DEPLOY_TOKEN]\xfe",
    }


def test_unpack_keeps_regular_files_only() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        link = tarfile.TarInfo("escape")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
        directory = tarfile.TarInfo("dir")
        directory.type = tarfile.DIRTYPE
        archive.addfile(directory)
        data = tarfile.TarInfo("ok.txt")
        data.size = 2
        archive.addfile(data, io.BytesIO(b"ok"))
    assert unpack_home(buffer.getvalue()) == {"ok.txt": b"ok"}


def test_public_session_hides_the_blob_key() -> None:
    assert public_session(None) is None
    shown = public_session({"turn": 2, "home_blob": "ab" * 16, "agent_session_id": "s"})
    assert shown == {"turn": 2, "agent_session_id": "s", "saved_home": True}


async def _sandboxes(count: int) -> list[ScriptedSandbox]:
    backend = ScriptedBackend(lambda _: Script())
    specs = [
        SandboxSpec(run_id=f"r{i}", collection="c", image="i", argv=["a"]) for i in range(count)
    ]
    return [await backend.launch(spec) for spec in specs]


async def test_kept_sandbox_is_taken_once_or_closed_when_idle() -> None:
    taken, idle = await _sandboxes(2)
    async with anyio.create_task_group() as tg:
        kept = KeptSandboxes(tg, idle_seconds=0.2)
        assert kept.keep("run-a", taken, "img")
        assert kept.keep("run-b", idle, "img")
        assert not kept.keep("run-b", idle, "img")
        assert kept.take("run-a") == (taken, "img")
        assert kept.take("run-a") is None
        await anyio.sleep(0.5)
        assert "run-b" not in kept
        assert kept.take("run-b") is None
    assert (taken.closed, idle.closed) == (False, True)


async def test_keeping_disabled_and_close_all() -> None:
    [sandbox] = await _sandboxes(1)
    async with anyio.create_task_group() as tg:
        assert not KeptSandboxes(tg, idle_seconds=0).keep("r", sandbox, "i")
        kept = KeptSandboxes(tg, idle_seconds=600)
        assert kept.keep("r", sandbox, "i")
        await kept.close_all()
        assert "r" not in kept
    assert sandbox.closed
