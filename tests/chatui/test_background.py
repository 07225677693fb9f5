"""Housekeeping calls of real chat UIs are recognised; a person's turn never is."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.chatui.background import is_background_request
from tests.support.chat_ui_prompts import (
    LIBRECHAT_TITLES,
    OPEN_WEBUI_TASKS,
    librechat_title,
    open_webui_rag,
    open_webui_task,
    open_webui_tool_selection,
)

HISTORY = [
    ("user", "Which region sold most last quarter?"),
    ("assistant", "The North region.\n\n_Jetty run [a1b2c3d4](https://jp.example/runs/x)_"),
]


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


@pytest.mark.parametrize("name", OPEN_WEBUI_TASKS)
def test_open_webui_task_prompts_are_housekeeping(name: str) -> None:
    prompt = open_webui_task(name, HISTORY, prompt="Which region")
    assert is_background_request({}, [user(prompt)])
    # As a text part, the way some clients send every message.
    assert is_background_request({}, [user([{"type": "text", "text": prompt}])])


def test_open_webui_tool_selection_is_housekeeping() -> None:
    messages = [
        {"role": "system", "content": open_webui_tool_selection('[{"name": "search"}]')},
        user("Query: Which region sold most?"),
    ]
    assert is_background_request({}, messages)


@pytest.mark.parametrize("name", LIBRECHAT_TITLES)
def test_librechat_title_prompts_are_housekeeping(name: str) -> None:
    prompt = librechat_title(name, "Which region sold most?", "The North region.")
    assert is_background_request({}, [user(prompt)])
    if name == "title-legacy":
        # LibreChat sends its legacy title prompt as a system message.
        assert is_background_request({}, [{"role": "system", "content": prompt}])


def test_the_task_header_marks_housekeeping() -> None:
    assert is_background_request({"x-openwebui-task": "title_generation"}, [user("anything")])


def test_a_turn_with_an_attachment_runs() -> None:
    # Open WebUI's retrieval template starts with "### Task:" like its chores do.
    turn = open_webui_rag(
        "Plot sales by region.", [("sales.csv", "region,total\nNorth,10"), ("notes.md", "Q3")]
    )
    assert turn.startswith("### Task:")
    assert not is_background_request({}, [user(turn)])
    assert not is_background_request({}, [{"role": "system", "content": "Be brief."}, user(turn)])


@pytest.mark.parametrize(
    "content",
    [
        "Please analyse the data",
        "### Task:\nGenerate a concise, 3-5 word title for this report.",
        "### Task: write the summary, then list follow-ups.",
        "Describe ### Task: later in the text",
        "Provide a concise title for my essay about rivers.",
        "",
    ],
)
def test_a_persons_turn_is_not_housekeeping(content: str) -> None:
    assert not is_background_request({}, [user(content)])


def test_a_conversation_is_never_housekeeping() -> None:
    # Chores are fresh prompts; a message list with history is a person's conversation,
    # whatever its last message says.
    prompt = open_webui_task("title", HISTORY)
    messages = [user(HISTORY[0][1]), {"role": "assistant", "content": HISTORY[1][1]}, user(prompt)]
    assert not is_background_request({}, messages)


def test_a_chore_quoting_an_attachment_turn_is_still_housekeeping() -> None:
    # The title prompt quotes the chat, whose first turn came with a file.
    turn = open_webui_rag("Plot sales.", [("sales.csv", "North,10")])
    prompt = open_webui_task("title", [("user", turn), ("assistant", "Done.")])
    assert is_background_request({}, [user(prompt)])
