"""Per-run relay tokens: the only credential an agent inside a sandbox ever holds.

The run lifecycle issues a token when a run starts and revokes it when the run ends; the
model relay accepts a token only in between::

    tokens = RunTokens()
    token = tokens.issue(run_id, collection, provider_overrides=None, on_usage=record)
    try:
        ...  # start the agent with ``token`` as its API key
    finally:
        tokens.revoke(run_id)

Tokens are random strings with no meaning; the real provider keys stay in the proxy. Never
log a token: it grants model access for as long as its run lives.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Literal

from pydantic import SecretStr

TOKEN_PREFIX = "jrt-"

KeyHeader = Literal["x-api-key", "bearer"]


@dataclass(frozen=True, slots=True)
class Credential:
    """A key for one provider, and optionally where to send it instead of the default.

    ``key_header`` says how the Anthropic relay presents the key: as ``x-api-key`` (Anthropic's
    own API) or as ``Authorization: Bearer`` (gateways such as OpenRouter's Anthropic endpoint,
    which take the key the way Claude Code sends ``ANTHROPIC_AUTH_TOKEN``). The other relays
    always use their API's own header. Neither the key nor the base URL (which may come from a
    collection's secrets) shows in ``repr``. ``guarded`` is set when the base URL came from a
    client (a collection's secret): its calls then go through the egress guard
    (:mod:`proxy.egress`), which keeps them off the server's internal networks.
    """

    api_key: SecretStr = field(repr=False)
    base_url: str | None = field(default=None, repr=False)
    key_header: KeyHeader = "x-api-key"
    guarded: bool = False


@dataclass(frozen=True, slots=True)
class ProviderCreds:
    """Credentials one run uses instead of the server's own (e.g. a collection's own key).

    One field per provider relay; a provider left as ``None`` uses the server's settings.
    ``provider`` names the model provider the run selected (``openrouter``, say), for messages
    and records; the relays go by the credentials alone.
    """

    anthropic: Credential | None = None
    openai: Credential | None = None
    google: Credential | None = None
    provider: str | None = None


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """Tokens one model call used, as the provider reported them, in one convention.

    ``input_tokens`` excludes cache reads and writes, which are counted in the two cache fields
    (Anthropic's convention; the OpenAI and Gemini relays subtract their cached counts to match),
    so ``prompt_tokens`` means the same for every provider. ``output_tokens`` includes reasoning
    tokens, of which ``reasoning_tokens`` says how many (OpenAI's convention; Gemini reports
    thoughts apart and the relay adds them in). ``complete`` is false when the call ended early
    (the agent went away, or the upstream broke off mid-stream); the numbers are then what had
    been reported so far.
    """

    provider: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    complete: bool = True
    reasoning_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        """All prompt tokens, cache reads and writes included (OpenAI's convention)."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens


UsageHook = Callable[[ModelUsage], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RunGrant:
    """What a valid token stands for: one live run and how its model calls are accounted."""

    run_id: str
    collection: str
    provider_overrides: ProviderCreds | None = None
    on_usage: UsageHook | None = None

    def __repr__(self) -> str:
        # The overrides hold keys (masked by SecretStr); keep reprs short anyway.
        return f"RunGrant(run_id={self.run_id!r}, collection={self.collection!r})"


def attributed(grant: RunGrant, usage: ModelUsage) -> ModelUsage:
    """``usage`` credited to the provider the grant's run selected (e.g. ``openrouter``), when
    it selected one; a relay names only the API it speaks."""
    overrides = grant.provider_overrides
    if overrides is None or overrides.provider is None or overrides.provider == usage.provider:
        return usage
    return replace(usage, provider=overrides.provider)


class RunTokens:
    """In-memory registry of the tokens of live runs.

    One instance per proxy process, shared by the run lifecycle (``issue``/``revoke``) and the
    relay (``lookup``). A run may hold several tokens (one per agent process, say); ``revoke``
    ends all of them. Tokens do not survive a restart, and neither do the runs they belong to.
    """

    def __init__(self) -> None:
        self._grants: dict[str, RunGrant] = {}
        self._by_run: dict[str, set[str]] = {}

    def issue(
        self,
        run_id: str,
        collection: str,
        provider_overrides: ProviderCreds | None = None,
        *,
        on_usage: UsageHook | None = None,
    ) -> str:
        """A new token for ``run_id``, valid until ``revoke(run_id)``.

        ``on_usage`` is awaited with the usage of each model call made with this token.
        """
        token = new_token()
        self._grants[token] = RunGrant(run_id, collection, provider_overrides, on_usage)
        self._by_run.setdefault(run_id, set()).add(token)
        return token

    def admit(self, token: str, like: str) -> None:
        """Let ``token``, made ahead of its run (`new_token`) and unknown until now, grant
        what ``like`` grants, until that run's `revoke`. A warm sandbox's agent started before
        its run with ``token`` gets its run's grant this way, at the claim.

        Raises `KeyError` when ``like`` is not a live token and `ValueError` when ``token``
        is one already.
        """
        grant = self._grants[like]
        if token in self._grants:
            raise ValueError("that token is in use")
        self._grants[token] = grant
        self._by_run.setdefault(grant.run_id, set()).add(token)

    def lookup(self, token: str) -> RunGrant | None:
        """The grant behind ``token``, or None when it is unknown or its run has ended."""
        return self._grants.get(token)

    def revoke(self, run_id: str) -> None:
        """Invalidate every token of ``run_id``; unknown runs are ignored."""
        for token in self._by_run.pop(run_id, ()):
            self._grants.pop(token, None)

    def is_live(self, run_id: str) -> bool:
        return run_id in self._by_run

    @contextmanager
    def granted(
        self,
        run_id: str,
        collection: str,
        provider_overrides: ProviderCreds | None = None,
        *,
        on_usage: UsageHook | None = None,
    ) -> Iterator[str]:
        """``issue`` for the duration of a ``with`` block; the run's tokens are revoked after."""
        token = self.issue(run_id, collection, provider_overrides, on_usage=on_usage)
        try:
            yield token
        finally:
            self.revoke(run_id)

    def __len__(self) -> int:
        return len(self._grants)


def new_token() -> str:
    """A fresh random token, granting nothing until `RunTokens` issues or admits it."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_from_headers(headers: Mapping[str, str]) -> str | None:
    """The token a client sent as ``x-api-key`` or ``Authorization: Bearer``."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, value = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None
