"""Where a run's model calls go: its selected provider, with the server's key or its collection's.

An agent speaks one API, and the model relay has one route per API: Claude Code's Anthropic
Messages, Codex's Responses API, Gemini CLI's Gemini API. ``model_provider`` (request, runbook
front matter or server default, see :func:`proxy.jetty.resolve_plan`) decides which upstream that
route forwards to, and with which key::

    agent        provider     upstream (server settings)                       key sent as
    claude-code  anthropic    anthropic_base_url   + /v1/messages              x-api-key
    claude-code  openrouter   openrouter_base_url  + /v1/messages              Authorization: Bearer
    claude-code  bedrock      bedrock_base_url     + /v1/messages (a gateway)  Authorization: Bearer
    codex        openai       openai_base_url      + /responses                Authorization: Bearer
    codex        openrouter   openrouter_base_url  + /v1/responses             Authorization: Bearer
    gemini-cli   google       google_base_url      + /v1beta/models/…          x-goog-api-key

Amazon Bedrock's own API needs AWS SigV4 signing, which the proxy does not do: ``bedrock`` means
an Anthropic-Messages-compatible gateway in front of Bedrock (LiteLLM, say), configured as
``bedrock_base_url``; without one, bedrock runs are refused.

A collection's secrets replace the server's settings for its runs (names in
:data:`proxy.jetty.plan.PROVIDER_SECRETS`: ``ANTHROPIC_API_KEY``/``ANTHROPIC_BASE_URL``,
``OPENAI_API_KEY``/``OPENAI_BASE_URL``, ``GEMINI_API_KEY`` or ``GOOGLE_API_KEY``/
``GOOGLE_GEMINI_BASE_URL``, ``OPENROUTER_API_KEY``/``OPENROUTER_BASE_URL``,
``BEDROCK_API_KEY``/``BEDROCK_BASE_URL``). A collection's base URL is used only with the
collection's own key, so that a collection can never send the server's key elsewhere.

:func:`select_credentials` decides all of this before the run starts, so a provider that is not
configured is a 400 with nothing started. Nothing here logs or echoes a key or a secret URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from pydantic import SecretStr

from proxy.agents import get_adapter
from proxy.errors import InvalidField
from proxy.jetty.plan import PROVIDER_SECRETS, agent_providers
from proxy.relay.tokens import Credential, KeyHeader, ProviderCreds
from proxy.runs.errors import ProviderNotConfigured
from proxy.settings import Settings

__all__ = ["ProviderNotConfigured", "select_credentials"]

# Providers whose Anthropic-Messages endpoint takes the key as a bearer token.
_BEARER_GATEWAYS = frozenset({"openrouter", "bedrock"})
_SETTING_NAMES = MappingProxyType(
    {
        "anthropic": ("anthropic_base_url", "anthropic_api_key"),
        "openai": ("openai_base_url", "openai_api_key"),
        "google": ("google_base_url", "google_api_key"),
        "openrouter": ("openrouter_base_url", "openrouter_api_key"),
        "bedrock": ("bedrock_base_url", "bedrock_api_key"),
    }
)
PARAM = "jetty.model_provider"


def select_credentials(
    agent: str, provider: str, settings: Settings, collection: str, secrets: Mapping[str, str]
) -> ProviderCreds:
    """Where ``agent``'s model calls go for ``provider``, and with which key.

    ``secrets`` are the collection's secrets in clear; the provider's own (see the module
    docstring) win over the server's settings. Raises :class:`ProviderNotConfigured` (400) when
    no base URL or no key is known, and :class:`~proxy.errors.InvalidField` (400,
    ``jetty.collection``) when the collection's provider secrets are unusable.
    """
    if provider not in agent_providers(agent) or provider not in PROVIDER_SECRETS:
        raise InvalidField(PARAM, f"Agent '{agent}' cannot use model provider '{provider}'")
    # The relay route the agent calls is named by the API it speaks.
    relay = get_adapter(agent).relay_api
    base_url, key = _collection_credential(provider, collection, secrets)
    server_url, server_key = _server_credential(provider, settings)
    guarded = base_url is not None  # the collection's own URL: a client's, not the operator's
    if key is None:
        key = server_key
    base_url = base_url or server_url
    if base_url is None or key is None:
        raise ProviderNotConfigured(_not_configured(provider, collection), param=PARAM)
    key_header: KeyHeader = "x-api-key"
    if provider == "openrouter":
        # OpenRouter's root serves Anthropic Messages at /v1/messages and the Responses API at
        # /v1/responses; the OpenAI relay's base URL names the API root (…/v1).
        base_url = base_url.removesuffix("/v1")
        if relay == "openai":
            base_url += "/v1"
    if relay == "anthropic" and provider in _BEARER_GATEWAYS:
        key_header = "bearer"
    credential = Credential(key, base_url, key_header, guarded=guarded)
    return ProviderCreds(
        anthropic=credential if relay == "anthropic" else None,
        openai=credential if relay == "openai" else None,
        google=credential if relay == "google" else None,
        provider=provider,
    )


def _collection_credential(
    provider: str, collection: str, secrets: Mapping[str, str]
) -> tuple[str | None, SecretStr | None]:
    """The collection's base URL and key for ``provider``; (None, None) when it has no key."""
    names = PROVIDER_SECRETS[provider]
    key = next((secrets[name] for name in names.keys if secrets.get(name)), None)
    url = secrets.get(names.base_url) or None
    if key is None:
        if url is not None:
            keys = " or ".join(names.keys)
            raise InvalidField(
                "jetty.collection",
                f"Collection '{collection}' defines the secret {names.base_url} but not {keys}:"
                " a collection's provider base URL is only used with the collection's own key",
            )
        return None, None
    if url is not None:
        url = url.strip()
        if not url.startswith(("http://", "https://")):
            raise InvalidField(
                "jetty.collection",
                f"Collection '{collection}' secret {names.base_url} must be an http:// or"
                " https:// URL",
            )
        url = url.rstrip("/")
    return url, SecretStr(key)


def _server_credential(provider: str, settings: Settings) -> tuple[str | None, SecretStr | None]:
    url_setting, key_setting = _SETTING_NAMES[provider]
    url: str | None = getattr(settings, url_setting)
    key: SecretStr | None = getattr(settings, key_setting)
    return url, key


def _not_configured(provider: str, collection: str) -> str:
    key_setting = _SETTING_NAMES[provider][1]
    keys = " or ".join(PROVIDER_SECRETS[provider].keys)
    if provider == "bedrock":
        return (
            "Model provider 'bedrock' needs an Anthropic-Messages-compatible gateway in front of"
            " Amazon Bedrock (the proxy does not sign AWS requests): configure bedrock_base_url"
            " and bedrock_api_key (JETTY_PROXY_BEDROCK_BASE_URL, JETTY_PROXY_BEDROCK_API_KEY),"
            f" or define the secrets BEDROCK_BASE_URL and BEDROCK_API_KEY in collection"
            f" '{collection}'."
        )
    return (
        f"Model provider '{provider}' is not configured: this server has no {key_setting}"
        f" (JETTY_PROXY_{key_setting.upper()}) and collection '{collection}' defines no secret"
        f" {keys}. Configure one, or choose another jetty.model_provider."
    )
