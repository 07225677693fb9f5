"""Choosing where a run's model calls go: provider, server settings and collection secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.agents import agent_names, get_adapter
from proxy.errors import InvalidField
from proxy.jetty.plan import PROVIDER_SECRET_NAMES, agent_providers
from proxy.relay.tokens import Credential, ProviderCreds
from proxy.runs.credentials import ProviderNotConfigured, select_credentials
from proxy.settings import Settings

SERVER_KEYS = {
    "anthropic_api_key": "sk-ant-server",
    "openai_api_key": "sk-openai-server",
    "google_api_key": "g-server",
    "openrouter_api_key": "sk-or-server",
}


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(data_dir=tmp_path, **{**SERVER_KEYS, **overrides})


def only(creds: ProviderCreds) -> tuple[str, Credential]:
    """The one relay route the credentials fill, and its credential."""
    filled = [
        (name, value)
        for name in ("anthropic", "openai", "google")
        if (value := getattr(creds, name)) is not None
    ]
    assert len(filled) == 1, filled
    return filled[0]


def secret(credential: Credential) -> str:
    return credential.api_key.get_secret_value()


ANTHROPIC = "https://api.anthropic.com"
OPENAI = "https://api.openai.com/v1"
GOOGLE = "https://generativelanguage.googleapis.com"
OPENROUTER = "https://openrouter.ai/api"


@pytest.mark.parametrize(
    ("agent", "provider", "relay", "base_url", "key", "header"),
    [
        ("claude-code", "anthropic", "anthropic", ANTHROPIC, "sk-ant-server", "x-api-key"),
        ("claude-code", "openrouter", "anthropic", OPENROUTER, "sk-or-server", "bearer"),
        ("codex", "openai", "openai", OPENAI, "sk-openai-server", "x-api-key"),
        ("codex", "openrouter", "openai", OPENROUTER + "/v1", "sk-or-server", "x-api-key"),
        ("gemini-cli", "google", "google", GOOGLE, "g-server", "x-api-key"),
    ],
)
def test_the_provider_selects_the_upstream_and_key(
    tmp_path: Path, agent: str, provider: str, relay: str, base_url: str, key: str, header: str
) -> None:
    creds = select_credentials(agent, provider, settings(tmp_path), "acme", {})
    route, credential = only(creds)
    assert route == relay == get_adapter(agent).relay_api
    assert credential.base_url == base_url
    assert secret(credential) == key
    assert credential.key_header == header
    assert creds.provider == provider


def test_every_agent_provider_pair_is_handled(tmp_path: Path) -> None:
    configured = settings(
        tmp_path, bedrock_base_url="http://gateway.internal:4000/", bedrock_api_key="gw-key"
    )
    for agent in agent_names():
        for provider in agent_providers(agent):
            route, _ = only(select_credentials(agent, provider, configured, "acme", {}))
            assert route == get_adapter(agent).relay_api


def test_openrouter_base_url_is_the_api_root_with_or_without_v1(tmp_path: Path) -> None:
    configured = settings(tmp_path, openrouter_base_url="http://127.0.0.1:9/api/v1/")
    _, claude = only(select_credentials("claude-code", "openrouter", configured, "acme", {}))
    _, codex = only(select_credentials("codex", "openrouter", configured, "acme", {}))
    assert claude.base_url == "http://127.0.0.1:9/api"
    assert codex.base_url == "http://127.0.0.1:9/api/v1"


def test_bedrock_goes_through_a_configured_gateway(tmp_path: Path) -> None:
    configured = settings(
        tmp_path, bedrock_base_url="http://gateway.internal:4000/", bedrock_api_key="gw-key"
    )
    creds = select_credentials("claude-code", "bedrock", configured, "acme", {})
    _, credential = only(creds)
    assert credential.base_url == "http://gateway.internal:4000"
    assert secret(credential) == "gw-key"
    assert credential.key_header == "bearer"
    assert creds.provider == "bedrock"


@pytest.mark.parametrize(
    ("agent", "provider", "unset", "mentions"),
    [
        ("claude-code", "anthropic", {"anthropic_api_key": None}, "ANTHROPIC_API_KEY"),
        ("claude-code", "openrouter", {"openrouter_api_key": None}, "OPENROUTER_API_KEY"),
        ("codex", "openrouter", {"openrouter_api_key": None}, "JETTY_PROXY_OPENROUTER_API_KEY"),
        ("codex", "openai", {"openai_api_key": None}, "OPENAI_API_KEY"),
        ("gemini-cli", "google", {"google_api_key": None}, "GEMINI_API_KEY or GOOGLE_API_KEY"),
        ("claude-code", "bedrock", {}, "bedrock_base_url"),
        ("claude-code", "bedrock", {"bedrock_api_key": "gw-key"}, "does not sign AWS"),
        ("claude-code", "bedrock", {"bedrock_base_url": "http://gw:4000"}, "BEDROCK_API_KEY"),
    ],
)
def test_an_unconfigured_provider_is_a_400_naming_what_to_set(
    tmp_path: Path, agent: str, provider: str, unset: dict[str, Any], mentions: str
) -> None:
    with pytest.raises(ProviderNotConfigured) as caught:
        select_credentials(agent, provider, settings(tmp_path, **unset), "acme", {})
    error = caught.value
    assert error.status_code == 400
    assert error.param == "jetty.model_provider"
    assert error.code == "model_provider_not_configured"
    assert mentions in error.message
    assert f"'{provider}'" in error.message


def test_collection_secrets_replace_the_servers_key(tmp_path: Path) -> None:
    secrets = {"ANTHROPIC_API_KEY": "sk-ant-acme", "OPENAI_API_KEY": "sk-openai-acme"}
    _, credential = only(
        select_credentials("claude-code", "anthropic", settings(tmp_path), "acme", secrets)
    )
    assert secret(credential) == "sk-ant-acme"
    assert credential.base_url == "https://api.anthropic.com"  # the server's base URL
    assert credential.key_header == "x-api-key"


def test_a_collection_key_works_without_any_server_key(tmp_path: Path) -> None:
    bare = Settings(data_dir=tmp_path)
    for agent, provider, secrets in [
        ("claude-code", "anthropic", {"ANTHROPIC_API_KEY": "a"}),
        ("claude-code", "openrouter", {"OPENROUTER_API_KEY": "o"}),
        ("codex", "openai", {"OPENAI_API_KEY": "b"}),
        ("codex", "openrouter", {"OPENROUTER_API_KEY": "o"}),
        ("gemini-cli", "google", {"GEMINI_API_KEY": "g"}),
        ("gemini-cli", "google", {"GOOGLE_API_KEY": "g"}),
        ("claude-code", "bedrock", {"BEDROCK_API_KEY": "k", "BEDROCK_BASE_URL": "http://gw"}),
    ]:
        _, credential = only(select_credentials(agent, provider, bare, "acme", secrets))
        assert secret(credential) in secrets.values()


def test_gemini_api_key_wins_over_google_api_key(tmp_path: Path) -> None:
    secrets = {"GOOGLE_API_KEY": "google", "GEMINI_API_KEY": "gemini"}
    _, credential = only(
        select_credentials("gemini-cli", "google", settings(tmp_path), "acme", secrets)
    )
    assert secret(credential) == "gemini"


def test_a_collection_base_url_comes_with_the_collection_key(tmp_path: Path) -> None:
    secrets = {
        "OPENROUTER_API_KEY": "sk-or-acme",
        "OPENROUTER_BASE_URL": " https://gateway.acme.test/openrouter/ ",
    }
    _, claude = only(
        select_credentials("claude-code", "openrouter", settings(tmp_path), "acme", secrets)
    )
    _, codex = only(select_credentials("codex", "openrouter", settings(tmp_path), "acme", secrets))
    assert claude.base_url == "https://gateway.acme.test/openrouter"
    assert codex.base_url == "https://gateway.acme.test/openrouter/v1"
    assert secret(claude) == secret(codex) == "sk-or-acme"
    # A client's URL: the relay sends its calls through the egress guard.
    assert claude.guarded and codex.guarded


def test_the_servers_own_urls_are_not_guarded(tmp_path: Path) -> None:
    for secrets in ({}, {"ANTHROPIC_API_KEY": "sk-ant-acme"}):
        _, credential = only(
            select_credentials("claude-code", "anthropic", settings(tmp_path), "acme", secrets)
        )
        assert not credential.guarded


def test_a_collection_base_url_never_gets_the_servers_key(tmp_path: Path) -> None:
    secrets = {"ANTHROPIC_BASE_URL": "https://attacker.example"}
    with pytest.raises(InvalidField) as caught:
        select_credentials("claude-code", "anthropic", settings(tmp_path), "acme", secrets)
    assert caught.value.param == "jetty.collection"
    assert "ANTHROPIC_BASE_URL" in caught.value.message
    assert "attacker" not in caught.value.message


def test_a_collection_base_url_must_be_http(tmp_path: Path) -> None:
    secrets = {"OPENAI_API_KEY": "sk-acme", "OPENAI_BASE_URL": "file:///etc/secret-place"}
    with pytest.raises(InvalidField) as caught:
        select_credentials("codex", "openai", settings(tmp_path), "acme", secrets)
    assert caught.value.param == "jetty.collection"
    assert "secret-place" not in caught.value.message


def test_other_providers_secrets_do_not_matter(tmp_path: Path) -> None:
    secrets = {"OPENAI_API_KEY": "sk-acme", "OPENAI_BASE_URL": "https://elsewhere.example"}
    _, credential = only(
        select_credentials("claude-code", "anthropic", settings(tmp_path), "acme", secrets)
    )
    assert secret(credential) == "sk-ant-server"


def test_empty_secrets_count_as_undefined(tmp_path: Path) -> None:
    secrets = {"ANTHROPIC_API_KEY": ""}
    _, credential = only(
        select_credentials("claude-code", "anthropic", settings(tmp_path), "acme", secrets)
    )
    assert secret(credential) == "sk-ant-server"


def test_credentials_never_show_keys_or_urls(tmp_path: Path) -> None:
    secrets = {"ANTHROPIC_API_KEY": "sk-ant-acme", "ANTHROPIC_BASE_URL": "https://private.acme"}
    creds = select_credentials("claude-code", "anthropic", settings(tmp_path), "acme", secrets)
    shown = repr(creds) + str(creds)
    assert "sk-ant-acme" not in shown
    assert "private.acme" not in shown


def test_every_provider_secret_name_is_reserved() -> None:
    assert {
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "GOOGLE_GEMINI_BASE_URL",
        "OPENROUTER_API_KEY",
        "OPENROUTER_BASE_URL",
        "BEDROCK_API_KEY",
        "BEDROCK_BASE_URL",
    } == PROVIDER_SECRET_NAMES


def test_openrouter_and_bedrock_settings_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JETTY_PROXY_OPENROUTER_BASE_URL", "http://127.0.0.1:9/api/")
    monkeypatch.setenv("JETTY_PROXY_OPENROUTER_API_KEY", "sk-or-env")
    monkeypatch.setenv("JETTY_PROXY_BEDROCK_BASE_URL", "http://127.0.0.1:8/")
    monkeypatch.setenv("JETTY_PROXY_BEDROCK_API_KEY", "gw-env")
    loaded = Settings(data_dir=tmp_path)
    assert loaded.openrouter_base_url == "http://127.0.0.1:9/api"
    assert loaded.openrouter_api_key is not None
    assert loaded.openrouter_api_key.get_secret_value() == "sk-or-env"
    assert loaded.bedrock_base_url == "http://127.0.0.1:8"
    assert "sk-or-env" not in repr(loaded)


def test_provider_base_urls_must_be_http(tmp_path: Path) -> None:
    for name in ("openrouter_base_url", "bedrock_base_url"):
        with pytest.raises(ValueError, match="http"):
            Settings.model_validate({"data_dir": tmp_path, name: "ftp://example"})
    assert Settings(data_dir=tmp_path).bedrock_base_url is None
    assert Settings(data_dir=tmp_path).openrouter_base_url == "https://openrouter.ai/api"
