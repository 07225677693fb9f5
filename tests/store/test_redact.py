"""Redaction of secret values and credential-looking fields."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.store.redact import StreamRedactor, redact, redact_value

SECRETS = {"SHORT": "abc", "KEY": "sk-12345", "LONGER": "sk-12345-extended"}


def test_redact_text_longest_first_and_skips_tiny_values() -> None:
    text = "a sk-12345-extended and sk-12345, abc"
    assert redact(text, SECRETS) == "a [redacted:LONGER] and [redacted:KEY], abc"
    assert redact("nothing here", {}) == "nothing here"


def test_redact_value_walks_json() -> None:
    value = {
        "list": ["x sk-12345", 3, None, True],
        "nested": {"sk-12345": "key in a key"},
        "api_key": "not-a-known-secret",
        "Authorization": "Bearer whatever",
        "input_tokens": 12,
        "empty_token": "",
    }
    assert redact_value(value, SECRETS) == {
        "list": ["x [redacted:KEY]", 3, None, True],
        "nested": {"[redacted:KEY]": "key in a key"},
        "api_key": "[redacted]",
        "Authorization": "[redacted]",
        "input_tokens": 12,
        "empty_token": "",
    }
    plain = redact_value({"password": "hunter22"}, {}, credential_fields=False)
    assert plain == {"password": "hunter22"}


def _oracle(text: str, secrets: dict[str, str]) -> str:
    """The definition: left to right, at each place the longest secret that starts there."""
    values = sorted(
        ((value, name) for name, value in secrets.items() if len(value) >= 4),
        key=lambda item: -len(item[0]),
    )
    names: dict[str, str] = {}
    for value, name in values:
        names.setdefault(value, name)
    out: list[str] = []
    index = 0
    while index < len(text):
        found = next((value for value in names if text.startswith(value, index)), None)
        if found is None:
            out.append(text[index])
            index += 1
        else:
            out.append(f"[redacted:{names[found]}]")
            index += len(found)
    return "".join(out)


def _streamed(pieces: list[str], secrets: dict[str, str]) -> str:
    redactor = StreamRedactor(secrets)
    shown = [redactor.feed(piece) for piece in pieces]
    return "".join(shown) + redactor.flush()


# Secrets and texts from an alphabet the placeholders do not use: "[redacted:NAME]" can then
# never hold a secret, and any secret in the output is a leak.
ALPHABET = "xyz0123456789-"
secret_values = st.text(ALPHABET, min_size=1, max_size=12)
secret_maps = st.dictionaries(
    st.sampled_from(["A", "B", "C", "D"]), secret_values, min_size=1, max_size=4
)


@st.composite
def texts_with_secrets(draw: st.DrawFn) -> tuple[str, dict[str, str], list[int]]:
    secrets = draw(secret_maps)
    chunks = draw(
        st.lists(
            st.one_of(st.text(ALPHABET, max_size=8), st.sampled_from(sorted(secrets.values()))),
            max_size=12,
        )
    )
    text = "".join(chunks)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=10)))
    return text, secrets, cuts


@given(texts_with_secrets())
def test_any_split_of_a_stream_redacts_like_the_whole_text(
    case: tuple[str, dict[str, str], list[int]],
) -> None:
    text, secrets, cuts = case
    pieces = [text[start:end] for start, end in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    shown = _streamed(pieces, secrets)
    assert shown == _oracle(text, secrets)
    for value in secrets.values():
        if len(value) >= 4:
            assert value not in shown


@given(texts_with_secrets())
def test_a_stream_holds_back_less_than_the_longest_secret(
    case: tuple[str, dict[str, str], list[int]],
) -> None:
    text, secrets, cuts = case
    redactor = StreamRedactor(secrets)
    longest = max(len(value) for value in secrets.values())
    for start, end in zip([0, *cuts], [*cuts, len(text)], strict=True):
        redactor.feed(text[start:end])
        assert redactor.held <= max(longest - 1, 0)


def test_a_secret_split_across_pieces_never_shows_in_part() -> None:
    redactor = StreamRedactor({"TOKEN": "s3cret-value"})
    assert redactor.feed("the token is s3c") == "the token is "
    assert redactor.feed("ret-va") == ""
    assert redactor.feed("lue, ok") == "[redacted:TOKEN], ok"
    assert redactor.feed("s3cret-v") == ""
    assert redactor.flush() == "s3cret-v"  # the stream ended: it was not the secret


def test_a_longer_secret_that_begins_like_a_shorter_one_wins() -> None:
    redactor = StreamRedactor({"SHORT": "abcd", "LONG": "abcdefgh"})
    assert redactor.feed("<abcd") == "<"
    assert redactor.feed("efgh>") == "[redacted:LONG]>"
    assert redactor.feed("abcd!") == "[redacted:SHORT]!"


def test_without_secrets_long_enough_nothing_is_held() -> None:
    redactor = StreamRedactor({"TINY": "abc"})
    assert not redactor.active
    assert redactor.feed("ab") == "ab"
    assert redactor.held == 0
