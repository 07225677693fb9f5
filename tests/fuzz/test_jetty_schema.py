"""Any JSON value as a request's ``jetty`` block: a parsed block, or a 400 naming a field."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import InvalidField, ProxyError
from proxy.jetty.schema import JettyBlock, parse_jetty_block

FIELDS = sorted(
    info.validation_alias if isinstance(info.validation_alias, str) else name
    for name, info in JettyBlock.model_fields.items()
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)

# Values shaped like the real ones, so that the search also gets past the type checks.
plausible = {
    "runbook": st.booleans(),
    "collection": st.from_regex(r"[A-Za-z0-9._-]{0,70}", fullmatch=True),
    "task": st.from_regex(r"[A-Za-z0-9._-]{0,70}", fullmatch=True),
    "agent": st.sampled_from(["claude-code", "codex", "gemini-cli", "Claude", ""]),
    "image": st.from_regex(r"[a-zA-Z0-9./:_@-]{0,60}", fullmatch=True),
    "base_image": st.from_regex(r"[a-z0-9./:_@-]{0,60}", fullmatch=True),
    "pip_packages": st.lists(st.from_regex(r"[A-Za-z0-9.\[\],=<>!~*_ -]{0,30}", fullmatch=True)),
    "apt_packages": st.lists(st.from_regex(r"[a-z0-9+.=:~-]{0,30}", fullmatch=True)),
    "file_paths": st.lists(st.text(alphabet="ab./\\:\x00 ", max_size=12), max_size=4),
    "files": st.lists(st.from_regex(r"file-[A-Za-z0-9_-]{0,10}|.{0,8}", fullmatch=True)),
    "template_variables": st.dictionaries(st.text(max_size=10), scalars, max_size=4),
    "runbook_url": st.from_regex(r"(https?|ftp|file)://[a-z0-9.:@\[\]/-]{0,30}", fullmatch=True),
    "timeout_sec": st.integers(min_value=-5, max_value=100_000),
    "cpus": st.floats(min_value=-1, max_value=100) | st.integers(-1, 100),
    "memory": st.from_regex(r"[0-9]{0,20}(\.[0-9]{0,12})?\s?[kKmMgGtTpP]?i?[bB]?", fullmatch=True)
    | st.integers(),
    "max_turns": st.integers(min_value=-1, max_value=20_000),
    "tool_activity": st.sampled_from(["reasoning", "content", "none", "all", ""]),
}

blocks = st.dictionaries(
    st.sampled_from([*FIELDS, "unknown", "Runbook", "memory_bytes"]), json_values, max_size=6
) | st.fixed_dictionaries({}, optional={name: s for name, s in plausible.items()})


def _check_refusal(raw: object, error: ProxyError) -> None:
    assert isinstance(error, InvalidField)
    assert 400 <= error.status_code < 500
    assert error.param is not None
    assert error.param == "jetty" or error.param.startswith("jetty.")
    if isinstance(raw, dict) and error.param != "jetty":
        named = error.param.removeprefix("jetty.")
        assert any(named == key or named.startswith((f"{key}.", f"{key}[")) for key in raw)
    assert isinstance(error.message, str) and len(error.message) < 2000
    json.dumps(error.body())


@given(json_values | blocks)
def test_any_json_value_is_a_block_or_a_named_400(raw: Any) -> None:
    try:
        block = parse_jetty_block(raw)
    except ProxyError as exc:
        _check_refusal(raw, exc)
        return
    assert isinstance(raw, dict)
    # What is kept is plain JSON (it is stored with the trajectory) ...
    json.dumps(block.model_dump(mode="json"))
    # ... and parsing what was kept gives the same block.
    again = {
        ("memory" if name == "memory_bytes" else name): getattr(block, name)
        for name in block.model_fields_set
    }
    assert parse_jetty_block(again) == block


@given(st.dictionaries(st.sampled_from(sorted(plausible)), st.just(None), min_size=1))
def test_null_means_not_given_for_optional_fields(raw: dict[str, None]) -> None:
    try:
        block = parse_jetty_block(raw)
    except ProxyError as exc:
        _check_refusal(raw, exc)
        return
    for name in raw:
        assert getattr(block, "memory_bytes" if name == "memory" else name) is None
