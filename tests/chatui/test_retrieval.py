"""Taking Open WebUI's retrieval template apart: the user's request, and the sources by name."""

from __future__ import annotations

from proxy.chatui.retrieval import (
    Source,
    Unwrapped,
    has_retrieval_context,
    message_text,
    split_retrieval,
    unwrap_retrieval,
    without_retrieval,
)
from tests.support.chat_ui_prompts import open_webui_rag, open_webui_task, template


def test_the_request_and_the_sources_of_a_real_retrieval_message() -> None:
    question = "Plot sales by region and\nsave it as chart.png."
    text = open_webui_rag(
        question,
        [
            ("sales.csv", "region,total\nNorth,10"),
            ("notes.md", "# Q3\nNorth grew."),
            ("sales.csv", "South,7"),
        ],
    )
    found = split_retrieval(text)
    assert found is not None
    assert found.request == question
    assert found.sources == (
        Source("sales.csv", "region,total\nNorth,10\n\nSouth,7"),
        Source("notes.md", "# Q3\nNorth grew."),
    )


def test_the_template_in_a_system_message_leaves_the_request_to_the_user_message() -> None:
    # Open WebUI's RAG_SYSTEM_CONTEXT: the filled template alone, as a system message.
    context = '<source id="1" name="a.txt">alpha</source>'
    found = split_retrieval(template("open-webui", "rag").replace("{{CONTEXT}}", context))
    assert found is not None
    assert found.request == ""
    assert found.sources == (Source("a.txt", "alpha"),)


def test_older_template_forms() -> None:
    # Templates that ended with <user_query>, and 0.5's <source_id>/<source_context> tags.
    old = (
        "### Task:\nRespond to the user query using the provided context.\n\n<context>\n"
        "<source><source_id>report.pdf</source_id><source_context>Revenue rose.</source_context>"
        "</source>\n</context>\n\n<user_query>\nSummarise the report.\n</user_query>\n"
    )
    found = split_retrieval(old)
    assert found is not None
    assert found.request == "Summarise the report."
    assert found.sources == (Source("report.pdf", "Revenue rose."),)


def test_unnamed_sources_and_escaped_names() -> None:
    text = (
        '<context>\n<source id="2">web text</source>\n'
        '<source id="3" name="a &amp; b.txt">x</source>\n</context>\nWhat is it?'
    )
    found = split_retrieval(text)
    assert found is not None
    assert [s.name for s in found.sources] == ["source-2", "a & b.txt"]
    assert found.request == "What is it?"


def test_other_messages_are_not_retrieval_messages() -> None:
    assert split_retrieval("Plot sales by region.") is None
    assert split_retrieval("<context>no sources here</context> do it") is None
    # A housekeeping prompt quoting such a turn is not one either.
    quoted = open_webui_task("title", [("user", open_webui_rag("Plot.", [("a.csv", "1")]))])
    assert not has_retrieval_context(quoted)
    assert split_retrieval(quoted) is None


def test_message_text_of_parts() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]
    assert message_text(parts) == "a\nb"
    assert message_text(None) == ""


def test_a_conversation_unwrapped_keeps_the_users_words_and_the_parts_in_place() -> None:
    rag = open_webui_rag("Plot it.", [("sales.csv", "North,10")])
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Earlier question"},
        {"role": "assistant", "content": "Earlier answer"},
        # Open WebUI puts the template in front of every text part of the message.
        {"role": "user", "content": [{"type": "text", "text": rag}, image]},
    ]
    unwrapped = unwrap_retrieval(messages)
    assert unwrapped.messages == [
        *messages[:3],
        {"role": "user", "content": [{"type": "text", "text": "Plot it."}, image]},
    ]
    assert unwrapped.sources == (Source("sales.csv", "North,10"),)
    assert unwrap_retrieval(messages[:3]) == Unwrapped(messages[:3], ())


def test_the_template_in_a_system_message_is_cut_out_of_it() -> None:
    # RAG_SYSTEM_CONTEXT: a system message of its own, or appended to the one there is.
    context = '<source id="1" name="a.txt">alpha</source>\n<source id="2">beta</source>'
    rag = template("open-webui", "rag").replace("{{CONTEXT}}", context)
    alone = unwrap_retrieval(
        [{"role": "system", "content": rag}, {"role": "user", "content": "Q?"}]
    )
    assert alone.messages == [{"role": "system", "content": ""}, {"role": "user", "content": "Q?"}]
    assert [s.name for s in alone.sources] == ["a.txt", "source-2"]
    appended = unwrap_retrieval([{"role": "system", "content": f"# Runbook\n\nAnswer.\n{rag}"}])
    assert appended.messages == [{"role": "system", "content": "# Runbook\n\nAnswer."}]
    assert without_retrieval(f"{rag}\nAfter.") == "After."
    assert without_retrieval("No context here.") == "No context here."


def test_passages_of_one_source_sent_twice_are_kept_once() -> None:
    rag = open_webui_rag("Q?", [("a.txt", "alpha")])
    context = template("open-webui", "rag").replace(
        "{{CONTEXT}}",
        '<source id="1" name="a.txt">alpha</source>\n<source id="2" name="a.txt">more</source>',
    )
    unwrapped = unwrap_retrieval(
        [{"role": "system", "content": context}, {"role": "user", "content": rag}]
    )
    assert unwrapped.sources == (Source("a.txt", "alpha\n\nmore"),)
