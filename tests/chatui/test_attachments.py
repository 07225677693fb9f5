"""OpenAI's ways to attach files to a chat message, parsed into safe, named inputs."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from proxy.chatui.attachments import (
    Attachment,
    AttachmentLimits,
    parse_attachments,
    unique_name,
)
from proxy.errors import ProxyError
from tests.support.openapi import validate

LIMITS = AttachmentLimits(max_files=4, max_file_bytes=1000, max_total_bytes=1500)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    message = {"role": "user", "content": [{"type": "text", "text": "Use these."}, *parts]}
    # Every input here is a real OpenAI shape.
    validate("ChatCompletionRequestUserMessage", message)
    return message


def file_data(data: str, filename: str | None = None) -> dict[str, Any]:
    file: dict[str, Any] = {"file_data": data}
    if filename is not None:
        file["filename"] = filename
    return {"type": "file", "file": file}


def image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, "detail": "auto"}}


def refused(messages: list[Any], limits: AttachmentLimits = LIMITS) -> ProxyError:
    with pytest.raises(ProxyError) as caught:
        parse_attachments(messages, limits)
    return caught.value


def test_every_kind_of_attachment() -> None:
    messages = [
        {"role": "system", "content": "You are an agent."},
        user(
            {"type": "file", "file": {"file_id": "file-abc123"}},
            file_data(f"data:application/pdf;base64,{b64(b'%PDF-1.7')}", "Q3 report.pdf"),
            file_data(b64(b"a,b\n1,2\n"), "table.csv"),
            image(f"data:image/png;base64,{b64(PNG)}"),
        ),
        user(
            {"type": "input_audio", "input_audio": {"data": b64(b"RIFF"), "format": "wav"}},
            file_data("data:text/plain,hello%20world"),
        ),
    ]
    found = parse_attachments(messages, AttachmentLimits(6, 1000, 6000))
    assert found == [
        Attachment(param="messages[1].content[1].file", file_id="file-abc123"),
        Attachment(
            param="messages[1].content[2].file",
            name="Q3 report.pdf",
            data=b"%PDF-1.7",
            media_type="application/pdf",
        ),
        Attachment(param="messages[1].content[3].file", name="table.csv", data=b"a,b\n1,2\n"),
        Attachment(
            param="messages[1].content[4].image_url",
            name="image-1.png",
            data=PNG,
            media_type="image/png",
        ),
        Attachment(
            param="messages[2].content[1].input_audio",
            name="audio-1.wav",
            data=b"RIFF",
            media_type="audio/wav",
        ),
        Attachment(
            param="messages[2].content[2].file",
            name="attachment-1.txt",
            data=b"hello world",
            media_type="text/plain",
        ),
    ]


def test_names_are_unique_and_avoid_taken_ones() -> None:
    messages = [
        user(
            file_data(b64(b"one"), "data.csv"),
            file_data(b64(b"two"), "data.csv"),
            file_data(b64(b"three"), "notes"),
        )
    ]
    found = parse_attachments(messages, LIMITS, taken={"data.csv", "notes"})
    assert [a.name for a in found] == ["data-2.csv", "data-3.csv", "notes-2"]
    assert unique_name(".hidden", {".hidden"}) == ".hidden-2"


def test_a_part_resent_with_a_later_turn_counts_once() -> None:
    part = file_data(b64(b"same"), "same.txt")
    messages = [user(part), {"role": "assistant", "content": "ok"}, user(part)]
    assert [a.name for a in parse_attachments(messages, LIMITS)] == ["same.txt"]


def test_hostile_file_names_are_refused_naming_the_field() -> None:
    for name in ["../../etc/passwd", "a/b.txt", "..\\x", "..", "bad\x00name"]:
        error = refused([user(file_data(b64(b"x"), name))])
        assert error.status_code == 400
        assert error.code == "invalid_filename"
        assert error.param == "messages[0].content[1].file.filename"


def test_odd_but_harmless_names_are_kept_safe() -> None:
    found = parse_attachments([user(file_data(b64(b"x"), 'résumé "final".txt'))], LIMITS)
    assert found[0].name == "résumé _final_.txt"


def test_bad_base64_is_refused() -> None:
    for value in ["not base64!", "data:application/pdf;base64,@@@@", "abc"]:
        error = refused([user(file_data(value, "a.pdf"))])
        assert (error.status_code, error.code) == (400, "invalid_base64")
        assert error.param == "messages[0].content[1].file.file_data"
    error = refused([user(image("data:image/png;base64,%%%"))])
    assert error.param == "messages[0].content[1].image_url.url"


def test_limits_per_file_in_all_and_in_number() -> None:
    big = refused([user(file_data(b64(b"x" * 1001), "big.bin"))])
    assert (big.status_code, big.code) == (413, "file_too_large")
    assert big.param == "messages[0].content[1].file.file_data"
    total = refused([user(file_data(b64(b"a" * 800), "a"), file_data(b64(b"b" * 800), "b"))])
    assert (total.status_code, total.code, total.param) == (
        413,
        "attachments_too_large",
        "messages[0].content[2].file",
    )
    many = refused([user(*(file_data(b64(bytes([n])), f"f{n}") for n in range(5)))])
    assert (many.status_code, many.code, many.param) == (
        400,
        "too_many_files",
        "messages[0].content[5].file",
    )


def test_unsupported_media_is_refused() -> None:
    remote = refused([user(image("https://example.com/cat.png"))])
    assert (remote.status_code, remote.code) == (400, "unsupported_media")
    svg = refused([user(image(f"data:image/svg+xml;base64,{b64(b'<svg/>')}"))])
    assert svg.code == "unsupported_media"
    audio = {"type": "input_audio", "input_audio": {"data": b64(b"x"), "format": "flac"}}
    assert refused([{"role": "user", "content": [audio]}]).param == (
        "messages[0].content[0].input_audio.format"
    )
    video = refused([{"role": "user", "content": [{"type": "video", "video": {}}]}])
    assert (video.code, video.param) == ("unsupported_content_part", "messages[0].content[0].type")


def test_malformed_file_parts() -> None:
    neither = refused([{"role": "user", "content": [{"type": "file", "file": {}}]}])
    assert (neither.status_code, neither.param) == (400, "messages[0].content[0].file")
    both = {"type": "file", "file": {"file_id": "file-1", "file_data": b64(b"x")}}
    assert refused([{"role": "user", "content": [both]}]).status_code == 400
    assert refused([{"role": "user", "content": ["text"]}]).param == "messages[0].content[0]"


def test_only_user_messages_carry_attachments() -> None:
    messages = [
        {"role": "assistant", "content": [{"type": "text", "text": "hi"}]},
        {"role": "user", "content": "plain text"},
    ]
    assert parse_attachments(messages, LIMITS) == []


def test_a_resent_image_counts_once_and_keeps_its_name() -> None:
    # Open WebUI and LibreChat resend every earlier image with each turn.
    first, second = (
        image(f"data:image/png;base64,{b64(PNG)}"),
        image(f"data:image/gif;base64,{b64(b'GIF89a')}"),
    )
    messages = [user(first), {"role": "assistant", "content": "ok"}, user(second, first)]
    found = parse_attachments(messages, AttachmentLimits(2, 1000, 1500))
    assert [(a.name, a.param) for a in found] == [
        ("image-1.png", "messages[0].content[1].image_url"),
        ("image-2.gif", "messages[2].content[1].image_url"),
    ]
