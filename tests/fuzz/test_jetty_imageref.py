"""Image references: what parses re-formats to itself, and nothing else gets through."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from proxy.jetty.imageref import NAME_MAX_LENGTH, ImageRef, InvalidImageRef, parse_image_ref

ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
alphanumeric = st.text(alphabet=ALNUM, min_size=1, max_size=6)
separators = st.sampled_from([".", "_", "__", "-", "--", "---"])
path_components = st.builds(
    lambda first, rest: first + "".join(sep + part for sep, part in rest),
    alphanumeric,
    st.lists(st.tuples(separators, alphanumeric), max_size=2),
)
repositories = st.lists(path_components, min_size=1, max_size=4).map("/".join)
domain_components = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?", fullmatch=True)
ports = st.integers(min_value=1, max_value=65535).map(str)
hosts = (
    st.lists(domain_components, min_size=2, max_size=4).map(".".join)
    | st.just("localhost")
    | st.sampled_from(["[::1]", "[fe80::1]", "127.0.0.1"])
)
registries = st.builds(
    lambda host, port: host + (f":{port}" if port else ""), hosts, st.none() | ports
) | st.builds(lambda host, port: f"{host}:{port}", domain_components, ports)
tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", fullmatch=True)
digests = st.sampled_from([("sha256", 64), ("sha384", 96), ("sha512", 128)]).flatmap(
    lambda kind: st.text(alphabet="0123456789abcdef", min_size=kind[1], max_size=kind[1]).map(
        lambda hex_: f"{kind[0]}:{hex_}"
    )
)
references = st.builds(
    ImageRef, st.none() | registries, repositories, st.none() | tags, st.none() | digests
)

# Strings near the grammar: its own characters, some that never belong, and case changes.
near_misses = st.text(alphabet=ALNUM + "ABCXYZ._-:/@[]$ ;\n\\ä", max_size=60) | references.map(
    str
).flatmap(
    lambda text: st.tuples(
        st.integers(0, len(text)), st.sampled_from(["", "A", "/", ":", "@", "..", "-", "//", " "])
    ).map(lambda edit: text[: edit[0]] + edit[1] + text[edit[0] :])
)


@given(references)
def test_a_reference_built_from_the_grammar_parses_to_itself(ref: ImageRef) -> None:
    name = f"{ref.registry}/{ref.repository}" if ref.registry else ref.repository
    assume(len(name) <= NAME_MAX_LENGTH)
    first = ref.repository.split("/")[0]
    # As in Docker, such a first component names a registry (see the module docstring).
    assume(ref.registry or "/" not in ref.repository or ("." not in first and first != "localhost"))
    text = str(ref)
    assert parse_image_ref(text) == ref
    assert str(parse_image_ref(text)) == text


@given(near_misses | st.text(max_size=80))
def test_any_string_is_refused_or_formats_back_to_itself(text: str) -> None:
    try:
        ref = parse_image_ref(text)
    except InvalidImageRef:
        return
    assert str(ref) == text
    assert ref.repository == ref.repository.lower()
    assert all(
        re.fullmatch(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", part)
        for part in ref.repository.split("/")
    )
    assert not re.search(r"[\s;$`\\]", text)


@given(
    st.from_regex(r"[a-z0-9]{0,4}[A-Z][A-Za-z0-9]{0,4}", fullmatch=True),
    repositories,
)
def test_an_uppercase_repository_is_refused(first: str, rest: str) -> None:
    with pytest.raises(InvalidImageRef):
        parse_image_ref(f"{first}/{rest}")
