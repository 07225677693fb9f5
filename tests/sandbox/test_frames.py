from __future__ import annotations

import pytest

from proxy.sandbox.frames import (
    FrameDecoder,
    FrameError,
    LineSplitter,
    StreamKind,
    TailBuffer,
    encode_frame,
)


def test_frames_split_at_every_byte_boundary() -> None:
    stream = (
        encode_frame(StreamKind.STDOUT, b"hello\n")
        + encode_frame(StreamKind.STDERR, b"oops")
        + encode_frame(StreamKind.STDOUT, b"")
        + encode_frame(StreamKind.STDOUT, b"x" * 70000)
    )
    for cut in (1, 3, 7, 8, 9, 500):
        decoder = FrameDecoder()
        frames = []
        for start in range(0, len(stream), cut):
            frames += decoder.feed(stream[start : start + cut])
        decoder.close()
        assert [(kind, len(payload)) for kind, payload in frames] == [
            (StreamKind.STDOUT, 6),
            (StreamKind.STDERR, 4),
            (StreamKind.STDOUT, 0),
            (StreamKind.STDOUT, 70000),
        ]


def test_frame_decoder_rejects_unknown_stream_and_truncation() -> None:
    with pytest.raises(FrameError, match="unknown stream"):
        FrameDecoder().feed(b"\x07\0\0\0\0\0\0\x01x")
    decoder = FrameDecoder()
    decoder.feed(encode_frame(StreamKind.STDOUT, b"abc")[:-1])
    with pytest.raises(FrameError, match="inside a frame"):
        decoder.close()


def test_line_splitter_keeps_multibyte_characters_across_chunks() -> None:
    data = "héllo wörld\r\nzweite ✓\nrest".encode()
    splitter = LineSplitter()
    lines = [line for byte in data for line in splitter.feed(bytes([byte]))]
    assert lines == ["héllo wörld", "zweite ✓"]
    assert splitter.flush() == ["rest"]
    assert splitter.flush() == []


def test_line_splitter_bounds_overlong_lines_and_replaces_bad_utf8() -> None:
    splitter = LineSplitter(max_line_bytes=4)
    assert splitter.feed(b"abcdefghij") == ["abcd", "efgh"]
    assert splitter.feed(b"\xff\n") == ["ij\ufffd"]


def test_tail_buffer_keeps_only_the_end() -> None:
    tail = TailBuffer(max_bytes=10)
    for piece in (b"0123456789", b"abc", b"", b"defghijklmnop"):
        tail.feed(piece)
    assert tail.text() == "ghijklmnop"
    small = TailBuffer(max_bytes=10)
    small.feed(b"ab")
    small.feed(b"cd")
    assert small.text() == "abcd"
