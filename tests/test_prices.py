"""Pricing model calls: the price database, the server's own table, and unknown models."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from genai_prices import Usage, calc_price

from proxy.prices import ModelPrice, PriceBook, TokenCounts
from proxy.settings import load_settings

CALL = TokenCounts(prompt=12_000, output=800, cache_read=3_000, cache_write=1_000)


def database_price(model: str, provider_id: str | None, tokens: TokenCounts) -> float:
    usage = Usage(
        input_tokens=tokens.prompt,
        output_tokens=tokens.output,
        cache_read_tokens=tokens.cache_read,
        cache_write_tokens=tokens.cache_write,
    )
    return float(calc_price(usage, model, provider_id=provider_id).total_price)


@pytest.mark.parametrize(
    ("model", "provider", "provider_id"),
    [
        ("claude-sonnet-4-6", "anthropic", "anthropic"),
        ("gpt-5", "openai", "openai"),
        ("gemini-2.5-flash", "google", "google"),
        # Tiered by prompt size: calculated by the database on every call.
        ("gemini-2.5-pro", "google", "google"),
        ("anthropic/claude-sonnet-4.5", "openrouter", "openrouter"),
    ],
)
def test_a_known_model_costs_what_the_price_database_says(
    model: str, provider: str, provider_id: str
) -> None:
    book = PriceBook()
    for tokens in (CALL, TokenCounts(300_000, 20), TokenCounts(0, 0)):
        cost = book.cost([model], tokens, provider=provider)
        assert cost == pytest.approx(database_price(model, provider_id, tokens), rel=1e-9)
    assert book.cost([model], CALL, provider=provider)


def test_cache_reads_and_writes_are_priced_apart_from_the_prompt() -> None:
    book = PriceBook()
    plain = book.cost(["claude-sonnet-4-6"], TokenCounts(10_000, 0), provider="anthropic")
    cached = book.cost(
        ["claude-sonnet-4-6"], TokenCounts(10_000, 0, cache_read=10_000), provider="anthropic"
    )
    assert plain == pytest.approx(10_000 * 3 / 1e6)
    assert cached == pytest.approx(10_000 * 0.3 / 1e6)


def test_an_unknown_model_costs_nothing_known() -> None:
    book = PriceBook()
    assert book.cost(["no-such-model-anywhere"], CALL) is None
    assert book.cost(["no-such-model-anywhere", None, ""], CALL, provider="anthropic") is None
    # The miss is remembered: asking again does not search again, and is still None.
    assert book.cost(["no-such-model-anywhere"], CALL) is None


def test_a_relayed_upstream_is_recognised_by_its_url_or_else_the_model_alone() -> None:
    book = PriceBook()
    expected = database_price("gpt-4o-mini", "openai", CALL)
    assert book.cost(["gpt-4o-mini"], CALL, api_url="https://api.openai.com/v1") == pytest.approx(
        expected
    )
    # A gateway the database does not know: the model is found under its own provider.
    assert book.cost(["gpt-4o-mini"], CALL, api_url="http://127.0.0.1:9/v1") == pytest.approx(
        expected
    )


def test_the_first_model_with_a_price_is_used() -> None:
    book = PriceBook()
    cost = book.cost(["our-alias", "claude-sonnet-4-6"], CALL, provider="anthropic")
    assert cost == pytest.approx(database_price("claude-sonnet-4-6", "anthropic", CALL))


def test_the_servers_table_adds_models_and_replaces_the_databases_prices() -> None:
    book = PriceBook(
        {
            "our-finetune": ModelPrice(input_usd_per_mtok=2.0, output_usd_per_mtok=10.0),
            "claude-sonnet-4-6": ModelPrice(
                input_usd_per_mtok=1.0,
                output_usd_per_mtok=5.0,
                cache_read_usd_per_mtok=0.1,
                cache_write_usd_per_mtok=1.25,
            ),
            "acme-*": ModelPrice(input_usd_per_mtok=0.5, output_usd_per_mtok=0.5),
        }
    )
    # Cache tokens without their own price cost the input price.
    assert book.cost(["our-finetune"], CALL) == pytest.approx((12_000 * 2 + 800 * 10) / 1e6)
    assert book.cost(["claude-sonnet-4-6"], CALL, provider="anthropic") == pytest.approx(
        (8_000 * 1 + 3_000 * 0.1 + 1_000 * 1.25 + 800 * 5) / 1e6
    )
    assert book.cost(["acme-large-2"], CALL) == pytest.approx((12_000 + 800) * 0.5 / 1e6)
    # The table wins over the database for any of the names, in order.
    assert book.cost(["gpt-4o-mini", "our-finetune"], CALL) == pytest.approx(
        (12_000 * 2 + 800 * 10) / 1e6
    )


def test_an_exact_name_wins_over_a_pattern() -> None:
    book = PriceBook(
        {
            "acme-*": ModelPrice(input_usd_per_mtok=1.0, output_usd_per_mtok=1.0),
            "acme-small": ModelPrice(input_usd_per_mtok=0.0, output_usd_per_mtok=0.0),
        }
    )
    assert book.cost(["acme-small"], CALL) == 0.0
    assert book.cost(["acme-large"], CALL) == pytest.approx(12_800 / 1e6)


def test_prices_are_read_from_the_toml_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[prices."our-finetune"]\ninput_usd_per_mtok = 2.5\noutput_usd_per_mtok = 10\n'
        'cache_read_usd_per_mtok = 0.25\n\n[prices."acme-*"]\n'
        "input_usd_per_mtok = 1\noutput_usd_per_mtok = 2\n"
    )
    settings = load_settings(config, data_dir=tmp_path)
    assert settings.prices["our-finetune"] == ModelPrice(
        input_usd_per_mtok=2.5, output_usd_per_mtok=10, cache_read_usd_per_mtok=0.25
    )
    assert list(settings.prices) == ["our-finetune", "acme-*"]


@pytest.mark.parametrize(
    "table",
    [
        '[prices."m"]\ninput_usd_per_mtok = -1\noutput_usd_per_mtok = 1\n',
        '[prices."m"]\ninput_usd_per_mtok = 1\n',
        '[prices."m"]\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\nsurcharge = 2\n',
    ],
)
def test_a_bad_price_table_is_refused_at_start(tmp_path: Path, table: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(table)
    with pytest.raises(ValueError, match="prices"):
        load_settings(config, data_dir=tmp_path)


def test_prices_need_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the price database tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    book = PriceBook()
    book.load()
    assert book.cost(["claude-opus-4-1"], CALL, provider="anthropic")
    assert book.cost(["gpt-4.1"], CALL, provider="openai")
