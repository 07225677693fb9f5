from __future__ import annotations

import re

import pytest

from proxy.jetty.imageref import ImageRef, InvalidImageRef, parse_image_ref

HEX64 = "a" * 32 + "0123456789abcdef" * 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ubuntu", ImageRef(None, "ubuntu")),
        ("ubuntu:24.04", ImageRef(None, "ubuntu", "24.04")),
        ("library/ubuntu", ImageRef(None, "library/ubuntu")),
        (
            f"library/ubuntu@sha256:{HEX64}",
            ImageRef(None, "library/ubuntu", None, f"sha256:{HEX64}"),
        ),
        ("ghcr.io/acme/data-science:v1", ImageRef("ghcr.io", "acme/data-science", "v1")),
        ("ghcr.io/org/env:v1.2", ImageRef("ghcr.io", "org/env", "v1.2")),
        ("127.0.0.1:5000/acme/env:v1", ImageRef("127.0.0.1:5000", "acme/env", "v1")),
        ("localhost/env", ImageRef("localhost", "env")),
        ("localhost:5000/env", ImageRef("localhost:5000", "env")),
        ("[::1]:5000/acme/env", ImageRef("[::1]:5000", "acme/env")),
        ("GHCR.IO/acme/env", ImageRef("GHCR.IO", "acme/env")),
        (
            "registry-1.example.com/a/b/c:latest",
            ImageRef("registry-1.example.com", "a/b/c", "latest"),
        ),
        ("acme/my_env__x.y-z---w", ImageRef(None, "acme/my_env__x.y-z---w")),
        ("python:3.12-slim", ImageRef(None, "python", "3.12-slim")),
        ("env:_private", ImageRef(None, "env", "_private")),
        ("env:" + "t" * 128, ImageRef(None, "env", "t" * 128)),
        (
            f"ghcr.io/acme/env:v1@sha256:{HEX64}",
            ImageRef("ghcr.io", "acme/env", "v1", f"sha256:{HEX64}"),
        ),
        (f"env@sha512:{'f' * 128}", ImageRef(None, "env", None, f"sha512:{'f' * 128}")),
        # "localhost:5000" alone is repository "localhost" with tag "5000", as in Docker.
        ("localhost:5000", ImageRef(None, "localhost", "5000")),
    ],
)
def test_valid_references(text: str, expected: ImageRef) -> None:
    parsed = parse_image_ref(text)
    assert parsed == expected
    assert str(parsed) == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("Ubuntu", "lowercase"),
        ("acme/Env", "lowercase"),
        # Older engines refuse these as uppercase repositories, newer ones would look for a
        # registry called "UPPER": refused either way, before any engine is asked.
        ("UPPER/case", "must be lowercase"),
        ("Acme/env:v1", "must be lowercase"),
        ("ghcr.io/Acme/env:v1", "lowercase"),
        ("acme//env", "empty path component"),
        ("/acme/env", "empty path component"),
        ("acme/env/", "empty path component"),
        ("env:v1!", "'!' cannot appear"),
        ("env:.v1", "tag may only hold"),
        ("env:-v1", "tag may only hold"),
        ("env:", "tag may only hold"),
        ("env:" + "t" * 129, "longer than 128"),
        ("env@sha256:abc", "digest must look like"),
        (f"env@sha256:{HEX64.upper()}", "64 lowercase hex"),
        (f"env@sha256:{HEX64}00", "64 lowercase hex"),
        (f"env@md5:{'a' * 32}", "unsupported digest algorithm"),
        (f"env@{HEX64}", "digest must look like"),
        (HEX64, "image ID"),
        ("a_b.c/env", "not a valid registry host"),
        ("-acme/env", "not a valid image reference"),
        ("acme/env--", "not a valid image reference"),
        ("acme/env..x", "not a valid image reference"),
        ("env;rm -rf /", "';' cannot appear"),
        ("$(id)", "'$' cannot appear"),
        ("ubuntu\n", "'\\n' cannot appear"),
        ("env:tägg", "'ä' cannot appear"),
        ("acme env", "' ' cannot appear"),
        ("a" * 256, "longer than 255"),
        ("a" * 1000, "too long"),
    ],
)
def test_invalid_references(text: str, reason: str) -> None:
    with pytest.raises(InvalidImageRef, match=re.escape(reason)):
        parse_image_ref(text)


def test_long_hostile_input_is_refused_quickly() -> None:
    # Would backtrack for a long time if the length were not capped before the regex ran.
    with pytest.raises(InvalidImageRef):
        parse_image_ref("a-" * 300 + "!")
