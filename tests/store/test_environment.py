"""Collection variables and secrets on every engine: sealed at rest, redacted on write."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

from proxy.store import SecretsUnavailable, Store, open_store
from proxy.store.crypto import SecretBox, generate_key
from tests.support.stores import make_store

pytestmark = pytest.mark.anyio

SECRET = "sk-live-51H8xQ2c9mZ"


async def test_variables_and_secret_names(store: Store) -> None:
    empty = await store.get_environment("alpha")
    assert empty.variables == {} and empty.secret_names == ()
    env = await store.update_environment(
        "alpha",
        variables={"REGION": "eu", "MODE": "fast"},
        secrets={"STRIPE_KEY": SECRET, "OTHER": "v4lue"},
    )
    assert env.variables == {"MODE": "fast", "REGION": "eu"}
    assert env.secret_names == ("OTHER", "STRIPE_KEY")
    assert await store.secret_values("alpha") == {"STRIPE_KEY": SECRET, "OTHER": "v4lue"}

    env = await store.update_environment(
        "alpha", variables={"MODE": None, "REGION": "us"}, secrets={"OTHER": None}
    )
    assert env.variables == {"REGION": "us"} and env.secret_names == ("STRIPE_KEY",)
    assert (await store.get_environment("beta")).secret_names == ()


async def test_a_copy_of_the_database_does_not_reveal_secrets(
    store: Store, database_url: str
) -> None:
    await store.update_environment("alpha", secrets={"STRIPE_KEY": SECRET})
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            dump = "\n".join(conn.iterdump())
    else:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute("SELECT collection, name, ciphertext FROM collection_secrets")
            dump = repr(rows.fetchall())
    assert "STRIPE_KEY" in dump
    assert SECRET not in dump
    assert SECRET.encode().hex() not in dump

    wrong_key = open_store(database_url, secret_box=SecretBox(generate_key()))
    try:
        with pytest.raises(SecretsUnavailable):
            await wrong_key.secret_values("alpha")
    finally:
        await wrong_key.close()
    no_key = open_store(database_url)
    try:
        with pytest.raises(SecretsUnavailable):
            await no_key.update_environment("alpha", secrets={"X": "y"})
        assert (await no_key.get_environment("alpha")).secret_names == ("STRIPE_KEY",)
    finally:
        await no_key.close()


async def test_secrets_are_redacted_wherever_a_run_could_echo_them(store: Store) -> None:
    await store.update_environment("alpha", secrets={"STRIPE_KEY": SECRET})
    run = await store.create_trajectory(
        "alpha",
        "t",
        jetty={"template_variables": {"key": SECRET, "note": f"use {SECRET} please"}},
    )
    assert SECRET not in repr(run.jetty)
    assert run.jetty["template_variables"]["note"] == "use [redacted:STRIPE_KEY] please"
    await store.append_event(run.id, "tool_result", {"output": f"export KEY={SECRET}\n"})
    updated = await store.update_trajectory(run.id, status="failed", error=f"bad key {SECRET}")
    events = await store.events_after(run.id)
    assert events[0].data == {"output": "export KEY=[redacted:STRIPE_KEY]\n"}
    assert updated.error == "bad key [redacted:STRIPE_KEY]"
    # Other collections' runs are not touched by alpha's secrets.
    other = await store.create_trajectory("beta", "t", jetty={"x": SECRET})
    assert other.jetty == {"x": SECRET}


async def test_new_secrets_are_redacted_at_once(store: Store, database_url: str) -> None:
    run = await store.create_trajectory("alpha", "t")
    await store.append_event(run.id, "progress", {"text": "warm the cache"})
    await store.update_environment("alpha", secrets={"TOKEN": "tok-123456"})
    await store.append_event(run.id, "progress", {"text": "tok-123456"})
    events = await store.events_after(run.id)
    assert events[1].data == {"text": "[redacted:TOKEN]"}
    # Another process's store sees the secret on its first read.
    other = make_store(database_url)
    try:
        await other.append_event(run.id, "progress", {"text": "again tok-123456"})
    finally:
        await other.close()
    assert (await store.events_after(run.id, 2))[0].data == {"text": "again [redacted:TOKEN]"}
