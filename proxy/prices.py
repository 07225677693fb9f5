"""What a model call costs: its token counts times the model's price.

Prices come from ``genai-prices`` (a price database kept up to date by its maintainers and
shipped inside the package: no network is needed, and none is used) and from the server's
``[prices."MODEL"]`` tables, which add models or replace the database's price::

    [prices."our-finetune"]
    input_usd_per_mtok = 3.0
    output_usd_per_mtok = 15.0
    cache_read_usd_per_mtok = 0.3      # optional; else the input price
    cache_write_usd_per_mtok = 3.75    # optional; else the input price

    book = PriceBook(settings.prices)
    book.load()                                    # off the event loop: reads the database
    book.cost(["claude-sonnet-4-6"], TokenCounts(prompt=1200, output=300), provider="anthropic")

A model neither knows is priced ``None`` — unknown, never zero. Table keys may be shell
patterns (``"claude-*"``); an exact name wins over a pattern, patterns match in order.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger("proxy.prices")

#: Our provider names (a model call's `ModelUsage.provider`) as the price database calls them.
PROVIDER_IDS: Mapping[str, str] = {
    "anthropic": "anthropic",
    "openai": "openai",
    "google": "google",
    "openrouter": "openrouter",
    "bedrock": "aws",
}
_PATTERN_CHARS = frozenset("*?[")
_MAX_CACHED = 4096
#: How long a model's price read from the database is used before it is read again (the
#: database holds dated price changes).
RATES_SECONDS = 3600.0


class ModelPrice(BaseModel):
    """One ``[prices."MODEL"]`` table: US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_usd_per_mtok: float = Field(ge=0)
    output_usd_per_mtok: float = Field(ge=0)
    cache_read_usd_per_mtok: float | None = Field(
        default=None, ge=0, description="cache reads; default the input price"
    )
    cache_write_usd_per_mtok: float | None = Field(
        default=None, ge=0, description="cache writes; default the input price"
    )

    def cost(self, tokens: TokenCounts) -> float:
        cache_read = self.cache_read_usd_per_mtok
        cache_write = self.cache_write_usd_per_mtok
        uncached = max(0, tokens.prompt - tokens.cache_read - tokens.cache_write)
        return (
            uncached * self.input_usd_per_mtok
            + tokens.cache_read * (self.input_usd_per_mtok if cache_read is None else cache_read)
            + tokens.cache_write * (self.input_usd_per_mtok if cache_write is None else cache_write)
            + tokens.output * self.output_usd_per_mtok
        ) / 1_000_000


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """One call's tokens in OpenAI's convention: ``prompt`` counts every prompt token, cache
    reads and writes included; ``output`` includes reasoning tokens."""

    prompt: int
    output: int
    cache_read: int = 0
    cache_write: int = 0


@dataclass(slots=True)
class CostTotal:
    """What several calls cost together: their sum, or None once one of them had no price
    (a total missing a part is not a total)."""

    usd: float = 0.0
    calls: int = 0
    unpriced: int = 0

    def add(self, cost: float | None) -> None:
        self.calls += 1
        if cost is None:
            self.unpriced += 1
        else:
            self.usd += cost

    @property
    def total(self) -> float | None:
        return None if self.unpriced else self.usd


class PriceBook:
    """Prices models from the server's table, then from the price database.

    Each model is looked up in the database once (found or not). A price that is linear in
    the token counts (no tiers by prompt size) is then kept as four rates and a per-call fee,
    read back from the database's own calculation, for an hour: pricing a call costs a
    microsecond instead of the database's ~100. Tiered prices are calculated every time.
    """

    def __init__(
        self,
        overrides: Mapping[str, ModelPrice] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        overrides = dict(overrides or {})
        self._exact = {name: price for name, price in overrides.items() if not _is_pattern(name)}
        self._patterns = [(name, price) for name, price in overrides.items() if _is_pattern(name)]
        self._clock = clock
        # (model, provider id, API URL) -> how the database finds its price, or None.
        self._found: dict[tuple[str, str | None, str | None], _Found | None] = {}
        self._snapshot: Any = None

    def load(self) -> None:
        """Read the price database (a fraction of a second); blocking, so call it from a
        worker thread. Pricing loads it on first use otherwise."""
        if self._snapshot is None:
            from genai_prices import data_snapshot

            self._snapshot = data_snapshot.get_snapshot()

    def cost(
        self,
        models: Sequence[str | None],
        tokens: TokenCounts,
        *,
        provider: str | None = None,
        api_url: str | None = None,
    ) -> float | None:
        """US dollars for ``tokens`` of the first of ``models`` (e.g. the name the request
        gave, then the one the provider answered with) that has a price; None when none has.

        ``provider`` (ours: ``anthropic``, ``openrouter``…) or ``api_url`` (the upstream's base
        URL) tell the database whose price to take; a model it cannot find there is looked
        for under any provider.
        """
        names = [name for name in models if name]
        for name in names:
            price = self._override(name)
            if price is not None:
                return price.cost(tokens)
        for name in names:
            found = self._lookup(name, PROVIDER_IDS.get(provider or ""), api_url)
            if found is not None:
                return self._price(found, tokens)
        return None

    def _override(self, model: str) -> ModelPrice | None:
        price = self._exact.get(model)
        if price is not None:
            return price
        for pattern, candidate in self._patterns:
            if fnmatch.fnmatchcase(model, pattern):
                return candidate
        return None

    def _lookup(self, model: str, provider_id: str | None, api_url: str | None) -> _Found | None:
        key = (model, provider_id, api_url)
        if key in self._found:
            found = self._found[key]
            if found is None or found.until > self._clock():
                return found
        self.load()
        found = None
        hints = [(provider_id, api_url)] if provider_id or api_url else []
        for hint_id, hint_url in (*hints, (None, None)):
            try:
                _, info = self._snapshot.find_provider_model(model, None, hint_id, hint_url)
            except LookupError:
                continue
            found = _Found(model, hint_id, hint_url, self._clock() + RATES_SECONDS)
            found.rates = self._rates(found, info)
            break
        if len(self._found) > _MAX_CACHED:
            self._found.clear()
        self._found[key] = found
        return found

    def _rates(self, found: _Found, info: Any) -> _Rates | None:
        """The price as rates, when it is linear in the counts (no tiers); else None."""
        from genai_prices.types import TieredPrices

        price = info.get_prices(datetime.now(UTC))
        if any(isinstance(value, TieredPrices) for value in vars(price).values()):
            return None
        million = 1_000_000
        fee = self._calc(found, TokenCounts(0, 0))
        probes = [
            self._calc(found, counts)
            for counts in (
                TokenCounts(million, 0),
                TokenCounts(0, million),
                TokenCounts(million, 0, cache_read=million),
                TokenCounts(million, 0, cache_write=million),
            )
        ]
        if fee is None or any(probe is None for probe in probes):
            return None
        per_token = [(probe - fee) / million for probe in probes if probe is not None]
        return _Rates(fee, *per_token)

    def _price(self, found: _Found, tokens: TokenCounts) -> float | None:
        rates = found.rates
        if rates is None:
            return self._calc(found, tokens)
        uncached = max(0, tokens.prompt - tokens.cache_read - tokens.cache_write)
        return (
            rates.fee
            + uncached * rates.input
            + tokens.output * rates.output
            + tokens.cache_read * rates.cache_read
            + tokens.cache_write * rates.cache_write
        )

    def _calc(self, found: _Found, tokens: TokenCounts) -> float | None:
        from genai_prices import Usage

        usage = Usage(
            input_tokens=tokens.prompt,
            output_tokens=tokens.output,
            cache_read_tokens=tokens.cache_read,
            cache_write_tokens=tokens.cache_write,
        )
        try:
            calculation = self._snapshot.calc(
                usage, found.model, found.provider_id, found.api_url, None
            )
        except (LookupError, ValueError) as exc:
            # Counts the database refuses (cache reads over the prompt, say): unknown, not 0.
            logger.warning("cannot price %s: %s", found.model, exc)
            return None
        return float(calculation.total_price)


@dataclass(slots=True)
class _Found:
    """How the database finds a model's price (the hint that worked), until when to trust it."""

    model: str
    provider_id: str | None
    api_url: str | None
    until: float
    rates: _Rates | None = None


@dataclass(frozen=True, slots=True)
class _Rates:
    """A linear price: a fee per call and dollars per token of each kind."""

    fee: float
    input: float
    output: float
    cache_read: float
    cache_write: float


def _is_pattern(name: str) -> bool:
    return not _PATTERN_CHARS.isdisjoint(name)
