"""Redaction of secret values and credential-looking fields."""

from __future__ import annotations

from proxy.store.redact import redact, redact_value

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
