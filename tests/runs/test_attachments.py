"""What a chat turn attaches reaches the run's sandbox under /app/assets and is named to the
agent; what cannot become a file is refused before anything of the run exists.

Real parts around the scripted sandbox: the store, blobs, the engine, Claude Code's command
line (the prompt is its last argument) and translator.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from proxy.agents.install import AgentCache
from proxy.errors import ProxyError
from proxy.runs.service import Runs
from proxy.sandbox import Script, ScriptedBackend, ScriptedSandbox
from proxy.store import Store
from tests.support.chat_ui_prompts import open_webui_rag, template
from tests.support.openapi import validate
from tests.support.runs import CLAUDE, IMAGE, RUNBOOK, answer_of, finished, request, runs_on

pytestmark = pytest.mark.anyio

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
GIF = b"GIF89a" + b"\x00" * 10
CSV = b"region,total\nNorth,10\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def user(text: str, *parts: dict[str, Any]) -> dict[str, Any]:
    message = {"role": "user", "content": [{"type": "text", "text": text}, *parts]}
    validate("ChatCompletionRequestUserMessage", message)  # every input is a real OpenAI shape
    return message


def file_id(value: str) -> dict[str, Any]:
    return {"type": "file", "file": {"file_id": value}}


def file_data(data: bytes | str, filename: str) -> dict[str, Any]:
    encoded = data if isinstance(data, str) else f"data:text/plain;base64,{b64(data)}"
    return {"type": "file", "file": {"file_data": encoded, "filename": filename}}


def image(data: bytes, media_type: str = "image/png") -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{b64(data)}"}}


async def upload(runs: Runs, collection: str, filename: str, data: bytes) -> str:
    async def chunks() -> AsyncIterator[bytes]:
        yield data

    blob = await runs.deps.blobs.put(chunks())
    record, _ = await runs.deps.store.add_file(
        collection, None, filename, "user_data", blob, "text/csv"
    )
    return record.id


def assets(sandbox: ScriptedSandbox) -> dict[str, bytes]:
    return {
        path.removeprefix("/app/assets/"): data
        for path, data in sandbox.files.items()
        if path.startswith("/app/assets/")
    }


def prompt(sandbox: ScriptedSandbox) -> str:
    """The agent's instruction: Claude Code's last argument."""
    return sandbox.spec.argv[-1]


def system_prompt(sandbox: ScriptedSandbox) -> str:
    argv = sandbox.spec.argv
    return argv[argv.index("--append-system-prompt") + 1]


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend(lambda _: Script(stdout=CLAUDE), images={IMAGE})


async def test_every_kind_of_attachment_is_written_and_named_to_the_agent(
    store: Store, tmp_path: Path, agent_cache: AgentCache, backend: ScriptedBackend
) -> None:
    wav = {"type": "input_audio", "input_audio": {"data": b64(b"RIFF"), "format": "wav"}}
    async with runs_on(store, tmp_path, backend, agents=agent_cache) as runs:
        stored = await upload(runs, "acme", "sales.csv", CSV)
        turn = user(
            "Chart these.",
            file_id(stored),
            file_data(b"# Notes", "notes.md"),
            image(PNG),
            wav,
        )
        live = await finished((await runs.start(request([turn]))).live)
    assert live.outcome == "completed", live.error
    [sandbox] = backend.sandboxes
    assert assets(sandbox) == {
        "sales.csv": CSV,
        "notes.md": b"# Notes",
        "image-1.png": PNG,
        "audio-1.wav": b"RIFF",
    }
    assert prompt(sandbox) == (
        "Chart these.\n\nThe user attached these files to this message, in /app/assets/:"
        " `sales.csv`, `notes.md`, `image-1.png`, `audio-1.wav`."
    )


async def test_a_follow_up_resends_earlier_files_which_keep_their_names(
    store: Store, tmp_path: Path, agent_cache: AgentCache, backend: ScriptedBackend
) -> None:
    first_turn = user("Look at this.", image(PNG), file_data(CSV, "data.csv"))
    async with runs_on(store, tmp_path, backend, agents=agent_cache) as runs:
        first = await finished((await runs.start(request([first_turn]))).live)
        # The UI resends the first message, with its files, and the answer naming the run;
        # the new message attaches one new image, and the first one again.
        history = [
            first_turn,
            {"role": "assistant", "content": answer_of(first)},
            user("And compare with this one.", image(GIF, "image/gif"), image(PNG)),
        ]
        second = await finished((await runs.start(request(history))).live)
    assert second.outcome == "completed", second.error
    # The follow-up ran in the first run's kept sandbox: its files are there, once each.
    [sandbox] = backend.sandboxes
    assert assets(sandbox) == {"image-1.png": PNG, "data.csv": CSV, "image-2.gif": GIF}
    assert prompt(sandbox) == (
        "And compare with this one.\n\n"
        "The user attached these files to this message, in /app/assets/: `image-2.gif`.\n"
        "Files attached earlier in this conversation, in /app/assets/:"
        " `image-1.png`, `data.csv`."
    )


async def test_retrieved_sources_become_files_and_the_request_the_instruction(
    store: Store, tmp_path: Path, agent_cache: AgentCache, backend: ScriptedBackend
) -> None:
    question = "Plot sales by region."
    turn = open_webui_rag(
        question, [("sales.csv", "region,total\nNorth,10"), ("report.pdf", "Revenue rose.")]
    )
    async with runs_on(store, tmp_path, backend, agents=agent_cache) as runs:
        live = await finished((await runs.start(request([{"role": "user", "content": turn}]))).live)
    assert live.outcome == "completed", live.error
    [sandbox] = backend.sandboxes
    # Passages of a PDF are text, not a PDF.
    assert assets(sandbox) == {
        "sales.csv": b"region,total\nNorth,10",
        "report.pdf.txt": b"Revenue rose.",
    }
    assert prompt(sandbox) == (
        f"{question}\n\nPassages the chat retrieved for this message from the user's"
        " documents, one file per document, in /app/assets/: `sales.csv` (from sales.csv),"
        " `report.pdf.txt` (from report.pdf)."
    )


async def test_retrieval_context_in_the_system_message_leaves_the_runbook_alone(
    store: Store, tmp_path: Path, agent_cache: AgentCache, backend: ScriptedBackend
) -> None:
    # Open WebUI's RAG_SYSTEM_CONTEXT, through a preset: the preset's runbook first (see
    # proxy.presets.preset_request), then the template as a system message of its own.
    context = '<source id="1" name="https://example.com/q3/">Q3 was good.</source>'
    rag = template("open-webui", "rag").replace("{{CONTEXT}}", context)
    messages = [{"role": "system", "content": rag}, {"role": "user", "content": "Summarise Q3."}]
    async with runs_on(store, tmp_path, backend, agents=agent_cache) as runs:
        live = await finished((await runs.start(request(messages))).live)
    assert live.outcome == "completed", live.error
    [sandbox] = backend.sandboxes
    assert system_prompt(sandbox) == RUNBOOK.replace("{{results_dir}}", "/app/results")
    assert assets(sandbox) == {"example.com_q3.txt": b"Q3 was good."}
    assert prompt(sandbox).startswith("Summarise Q3.\n\nPassages the chat retrieved")


@pytest.mark.parametrize(
    ("part", "status", "code", "param"),
    [
        (
            file_data("data:text/plain;base64,@@@@", "a.txt"),
            400,
            "invalid_base64",
            ".file.file_data",
        ),
        (file_data(b"x", "../../etc/passwd"), 400, "invalid_filename", ".file.filename"),
        (file_data(b"x" * 65, "big.txt"), 413, "file_too_large", ".file.file_data"),
        (image(b"x" * 65), 413, "file_too_large", ".image_url.url"),
        (
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            400,
            "unsupported_media",
            ".image_url.url",
        ),
        (file_id("file-unknown"), 404, "not_found", ".file.file_id"),
        ("another collection's", 404, "not_found", ".file.file_id"),
        ("too large an upload", 413, "file_too_large", ".file"),
        ("too many", 400, "too_many_files", ".file"),
    ],
)
async def test_what_cannot_become_a_file_is_refused_before_anything_exists(
    store: Store,
    tmp_path: Path,
    backend: ScriptedBackend,
    part: dict[str, Any] | str,
    status: int,
    code: str,
    param: str,
) -> None:
    limits = {"upload_max_bytes": 64, "attachments_max_files": 2}
    async with runs_on(store, tmp_path, backend, settings=limits) as runs:
        parts: list[dict[str, Any]]
        if part == "another collection's":
            parts = [file_id(await upload(runs, "globex", "theirs.csv", CSV))]
        elif part == "too large an upload":
            parts = [file_id(await upload(runs, "acme", "big.csv", b"x" * 65))]
        elif part == "too many":
            parts = [file_data(b"1", "a"), file_data(b"2", "b"), file_data(b"3", "c")]
        else:
            assert isinstance(part, dict)
            parts = [part]
        with pytest.raises(ProxyError) as refused:
            await runs.start(request([{"role": "user", "content": parts}]))
    error = refused.value
    assert (error.status_code, error.code) == (status, code)
    assert error.param == f"messages[1].content[{len(parts) - 1}]{param}"
    assert backend.sandboxes == []
    assert (await store.list_trajectories("acme", "t")).total == 0
