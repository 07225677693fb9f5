"""Taking Open WebUI's retrieval template apart: the user's request, and the sources by name."""

from __future__ import annotations

from proxy.chatui.retrieval import Source, has_retrieval_context, message_text, split_retrieval
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
