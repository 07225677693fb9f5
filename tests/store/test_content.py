"""Content types come from the bytes (and the name), never from the client."""

from __future__ import annotations

import pytest

from proxy.store.content import OCTET_STREAM, detect_content_type, serving_type


@pytest.mark.parametrize(
    ("head", "name", "kind"),
    [
        (b"\x89PNG\r\n\x1a\nrest", "x.txt", "image/png"),
        (b"%PDF-1.7", "doc.exe", "application/pdf"),
        (
            b"PK\x03\x04....",
            "a.docx",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ),
        (b"PK\x03\x04....", "a.bin", "application/zip"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "img", "image/webp"),
        (b"# Title\n", "summary.md", "text/markdown; charset=utf-8"),
        (b'{"a": 1}', "v.json", "application/json"),
        (b"plain words", "noext", "text/plain; charset=utf-8"),
        (b"<html><script>alert(1)</script>", "page.html", "text/html; charset=utf-8"),
        (b"\x00\x01\x02binary", "x.txt", OCTET_STREAM),
        (b"\xff\xfe\xfd not utf-8", "x.txt", OCTET_STREAM),
        ("ü".encode()[:1], "x.txt", "text/plain; charset=utf-8"),
    ],
)
def test_detect(head: bytes, name: str, kind: str) -> None:
    assert detect_content_type(head, name) == kind


def test_active_content_is_never_served_as_itself() -> None:
    assert serving_type("text/html; charset=utf-8") == OCTET_STREAM
    assert serving_type("image/svg+xml") == OCTET_STREAM
    assert serving_type("image/png") == "image/png"
