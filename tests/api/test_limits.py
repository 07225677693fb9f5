"""Limits at the HTTP edge, on a live proxy in front of a scripted upstream: refusals before
any upstream call, the cost of relayed chats, the limits endpoint (read by a collection's
keys, changed by admin keys only), and the per-collection metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.auth import hash_key, mint_key, printable_prefix
from proxy.store import Store
from tests.api.conftest import ProxyFactory
from tests.api.test_chat_recording import MESSAGES, client, recorded
from tests.support.scripted_openai import ScriptedUpstream
from tests.support.stores import with_store

Upstream = tuple[ScriptedUpstream, str]
#: The scripted upstream's plain answer reports 5 prompt and 3 completion tokens.
PRICES = {"echo": {"input_usd_per_mtok": 100_000, "output_usd_per_mtok": 50_000}}
ECHO_COST = (5 * 100_000 + 3 * 50_000) / 1e6


def chat(proxy: str, key: str = "unused", **jetty: Any) -> httpx.Response:
    body: dict[str, Any] = {"model": "echo", "messages": MESSAGES}
    if jetty:
        body["jetty"] = jetty
    return httpx.post(
        f"{proxy}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    )


def test_requests_per_minute_refuses_the_next_chat_without_calling_the_upstream(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    with make_proxy(collections={"default": {"requests_per_minute": 2}}) as proxy:
        for _ in range(2):
            client(proxy).chat.completions.create(model="echo", messages=MESSAGES)
        calls = len(upstream[0].seen)
        with pytest.raises(openai.RateLimitError) as refused:
            client(proxy).chat.completions.create(model="echo", messages=MESSAGES)
        assert len(upstream[0].seen) == calls
        response = refused.value.response
        assert response.status_code == 429
        assert 0 < int(response.headers["retry-after"]) <= 30
        assert response.headers["x-should-retry"] == "true"
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        # Another collection has no limit of its own.
        assert chat(proxy, collection="other").status_code == 200


def test_runbook_requests_count_against_the_same_rate(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    with make_proxy(default_limits={"requests_per_minute": 1}) as proxy:
        assert chat(proxy, collection="acme").status_code == 200
        response = chat(proxy, collection="acme", runbook=True, agent="claude-code")
        assert response.status_code == 429, response.text
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        runs = httpx.get(f"{proxy}/api/v1/db/trajectories/acme/default").json()
        assert runs["total"] == 0


def test_a_relayed_chat_is_priced_and_a_spent_budget_refuses_the_next(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    overrides = {"prices": PRICES, "collections": {"default": {"budget_usd": 0.5}}}
    with make_proxy(**overrides) as proxy:
        client(proxy).chat.completions.create(model="echo", messages=MESSAGES)
        (record,) = recorded(proxy)
        assert record["cost_usd"] == pytest.approx(ECHO_COST)
        calls = len(upstream[0].seen)
        response = chat(proxy)
        assert response.status_code == 429, response.text
        assert response.json()["error"]["code"] == "insufficient_quota"
        assert response.json()["error"]["type"] == "insufficient_quota"
        assert response.headers["x-should-retry"] == "false"
        assert len(upstream[0].seen) == calls


def test_a_chat_of_unknown_price_is_recorded_without_a_cost(proxy: str) -> None:
    client(proxy).chat.completions.create(model="echo", messages=MESSAGES)
    (record,) = recorded(proxy)
    assert record["usage"]["input_tokens"] == 5
    assert record["cost_usd"] is None


def new_key(database_url: str, *collections: str, admin: bool = False, **limits: Any) -> str:
    secret = mint_key()

    async def create(store: Store) -> object:
        return await store.create_key(
            hash_key(secret), printable_prefix(secret), collections, admin, None, limits or None
        )

    with_store(database_url, create)
    return secret


@pytest.fixture
def keyed(make_proxy: ProxyFactory, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A proxy with keys: an admin, one of acme limited to 2 requests a minute, one of beta."""
    database_url = f"sqlite:///{tmp_path / 'data' / 'jetty-proxy.db'}"
    keys = {
        "admin": new_key(database_url, admin=True),
        "acme": new_key(database_url, "acme", requests_per_minute=2),
        "beta": new_key(database_url, "beta"),
    }
    overrides = {"collections": {"acme": {"max_concurrent_runs": 3}}, "prices": PRICES}
    with make_proxy(**overrides) as proxy:
        yield proxy, keys


def limits_of(proxy: str, key: str, collection: str = "acme") -> httpx.Response:
    return httpx.get(
        f"{proxy}/api/v1/collections/{collection}/limits",
        headers={"authorization": f"Bearer {key}"},
    )


def patch(proxy: str, key: str, body: dict[str, Any], collection: str = "acme") -> httpx.Response:
    return httpx.patch(
        f"{proxy}/api/v1/collections/{collection}/limits",
        json=body,
        headers={"authorization": f"Bearer {key}"},
    )


def test_a_key_reads_its_collections_limits_and_usage(keyed: tuple[str, dict[str, str]]) -> None:
    proxy, keys = keyed
    assert chat(proxy, keys["acme"], collection="acme").status_code == 200
    response = limits_of(proxy, keys["acme"])
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["collection"] == "acme"
    assert report["max_concurrent_runs"] == {"limit": 3, "used": 0, "source": "config"}
    assert report["requests_per_minute"] == {"limit": None, "used": None, "source": None}
    assert report["key"]["requests_per_minute"] == {"limit": 2, "used": 1, "source": "key"}
    assert limits_of(proxy, keys["beta"]).status_code == 404
    assert limits_of(proxy, "jp-" + "x" * 43).status_code == 401


def test_only_an_admin_key_changes_limits_and_they_hold_at_once(
    keyed: tuple[str, dict[str, str]], upstream: Upstream
) -> None:
    proxy, keys = keyed
    refused = patch(proxy, keys["acme"], {"requests_per_minute": 1000})
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["type"] == "permission_error"
    assert patch(proxy, keys["beta"], {"requests_per_minute": 1000}).status_code == 404
    changed = patch(proxy, keys["admin"], {"requests_per_minute": 1, "budget_usd": 10})
    assert changed.status_code == 200, changed.text
    assert changed.json()["requests_per_minute"]["source"] == "runtime"
    assert changed.json()["budget_usd"]["limit"] == 10
    # The admin's own request is the collection's one request of this minute.
    assert chat(proxy, keys["beta"], collection="beta").status_code == 200
    assert chat(proxy, keys["admin"], collection="acme").status_code == 200
    calls = len(upstream[0].seen)
    response = chat(proxy, keys["acme"], collection="acme")
    assert response.status_code == 429
    assert len(upstream[0].seen) == calls
    # null gives the field back to the config: nothing limits acme's rate any more.
    cleared = patch(proxy, keys["admin"], {"requests_per_minute": None})
    assert cleared.json()["requests_per_minute"]["limit"] is None
    assert chat(proxy, keys["admin"], collection="acme").status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"requests_per_minute": 0},
        {"budget_usd": -1},
        {"budget_period": "week"},
        {"max_concurrent_runs": "many"},
        {"requests_per_second": 5},
    ],
)
def test_a_bad_limit_is_a_400(keyed: tuple[str, dict[str, str]], body: dict[str, Any]) -> None:
    proxy, keys = keyed
    response = patch(proxy, keys["admin"], body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == next(iter(body))


def test_metrics_count_requests_spend_and_refusals_by_collection(
    keyed: tuple[str, dict[str, str]],
) -> None:
    proxy, keys = keyed
    for _ in range(3):
        chat(proxy, keys["acme"], collection="acme")
    deadline = time.monotonic() + 5
    while True:
        metrics = httpx.get(f"{proxy}/metrics").text
        if 'jetty_proxy_collection_spend_usd_total{collection="acme"}' in metrics:
            break
        assert time.monotonic() < deadline, metrics
        time.sleep(0.05)
    assert 'jetty_proxy_collection_requests_total{collection="acme"} 3.0' in metrics
    assert f'jetty_proxy_collection_spend_usd_total{{collection="acme"}} {2 * ECHO_COST}' in metrics
    assert (
        'jetty_proxy_limit_refusals_total{collection="acme",limit="requests_per_minute"} 1.0'
        in metrics
    )
    assert "# TYPE jetty_proxy_collection_live_runs gauge" in metrics
