"""Run tokens: issued per run, valid only while the run lives."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from proxy.relay.tokens import (
    TOKEN_PREFIX,
    Credential,
    ModelUsage,
    ProviderCreds,
    RunGrant,
    RunTokens,
    attributed,
    new_token,
    token_from_headers,
)


def test_issue_lookup_revoke() -> None:
    tokens = RunTokens()
    first = tokens.issue("run1", "coll")
    second = tokens.issue("run1", "coll")
    other = tokens.issue("run2", "coll2")
    assert first.startswith(TOKEN_PREFIX) and len(first) > 40
    assert len({first, second, other}) == 3

    grant = tokens.lookup(first)
    assert grant is not None and (grant.run_id, grant.collection) == ("run1", "coll")
    assert tokens.is_live("run1")

    tokens.revoke("run1")
    assert tokens.lookup(first) is None and tokens.lookup(second) is None
    assert not tokens.is_live("run1")
    assert tokens.lookup(other) is not None
    tokens.revoke("never-issued")
    assert len(tokens) == 1


def test_granted_revokes_on_the_way_out() -> None:
    tokens = RunTokens()
    own = ProviderCreds(anthropic=Credential(SecretStr("sk-ant-own")))
    try:
        with tokens.granted("run1", "coll", own) as token:
            grant = tokens.lookup(token)
            assert grant is not None and grant.provider_overrides == own
            raise RuntimeError("the run failed")
    except RuntimeError:
        pass
    assert tokens.lookup(token) is None


def test_grants_do_not_show_keys() -> None:
    tokens = RunTokens()
    token = tokens.issue("run1", "coll", ProviderCreds(anthropic=Credential(SecretStr("sk-x"))))
    assert "sk-x" not in repr(tokens.lookup(token))


def test_credentials_do_not_show_keys_or_urls() -> None:
    own = ProviderCreds(
        anthropic=Credential(SecretStr("sk-x"), "https://private.example", "bearer"),
        provider="openrouter",
    )
    assert "sk-x" not in repr(own)
    assert "private.example" not in repr(own)


def test_usage_is_credited_to_the_runs_provider() -> None:
    usage = ModelUsage("anthropic", "claude", input_tokens=3)
    plain = RunGrant("run1", "coll")
    own_key = RunGrant("run1", "coll", ProviderCreds(anthropic=Credential(SecretStr("k"))))
    routed = RunGrant("run1", "coll", ProviderCreds(provider="openrouter"))
    assert attributed(plain, usage) is usage
    assert attributed(own_key, usage) is usage
    assert attributed(routed, usage) == ModelUsage("openrouter", "claude", input_tokens=3)


def test_token_from_headers() -> None:
    assert token_from_headers({"x-api-key": "jrt-a"}) == "jrt-a"
    assert token_from_headers({"authorization": "Bearer jrt-b"}) == "jrt-b"
    assert token_from_headers({"authorization": "bearer  jrt-c "}) == "jrt-c"
    assert token_from_headers({"authorization": "Basic eA=="}) is None
    assert token_from_headers({}) is None


def test_a_token_made_ahead_grants_nothing_until_admitted() -> None:
    tokens = RunTokens()
    ahead = new_token()
    assert ahead.startswith(TOKEN_PREFIX) and tokens.lookup(ahead) is None
    run_token = tokens.issue("run-1", "coll")
    tokens.admit(ahead, like=run_token)
    assert tokens.lookup(ahead) == tokens.lookup(run_token)
    with pytest.raises(ValueError, match="in use"):
        tokens.admit(ahead, like=run_token)
    with pytest.raises(KeyError):
        tokens.admit(new_token(), like="jrt-unknown")
    tokens.revoke("run-1")
    assert tokens.lookup(ahead) is None and tokens.lookup(run_token) is None
