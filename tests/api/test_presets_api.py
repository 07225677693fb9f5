"""Presets as models: listing, scoping, and chat-UI housekeeping requests that start nothing."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx

from proxy.auth import hash_key, mint_key, printable_prefix
from proxy.presets import Preset
from proxy.store import open_store
from tests.api.conftest import ProxyFactory
from tests.support.chat_ui_prompts import open_webui_rag, open_webui_task
from tests.support.openapi import validate
from tests.support.scripted_openai import ScriptedUpstream

PRESETS = {
    "data-science": Preset(
        model="echo", runbook="# Analyse", jetty={"collection": "acme", "task": "chat"}
    ),
    "other": Preset(model="echo", jetty={"collection": "globex"}),
}


def _key(data_dir: Path, collection: str) -> str:
    secret = mint_key()

    async def create() -> None:
        store = open_store(f"sqlite:///{data_dir / 'jetty-proxy.db'}")
        await store.migrate()
        await store.create_key(
            hash_key(secret), printable_prefix(secret), (collection,), False, None
        )
        await store.close()

    anyio.run(create)
    return secret


def test_presets_are_models_and_keys_see_only_their_own(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    with make_proxy(presets=PRESETS) as proxy:
        local = httpx.get(proxy + "/v1/models").json()
        validate("ListModelsResponse", local)
        ids = {m["id"] for m in local["data"]}
        assert {"jetty/data-science", "jetty/other"} <= ids
        key = _key(tmp_path / "data", "acme")
        auth = {"authorization": f"Bearer {key}"}
        scoped = {m["id"] for m in httpx.get(proxy + "/v1/models", headers=auth).json()["data"]}
        assert "jetty/data-science" in scoped
        assert "jetty/other" not in scoped
        hidden = httpx.post(
            proxy + "/v1/chat/completions",
            headers=auth,
            json={"model": "jetty/other", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert hidden.status_code == 404
        assert hidden.json()["error"]["code"] == "model_not_found"
        unknown = httpx.post(
            proxy + "/v1/chat/completions",
            headers=auth,
            json={"model": "jetty/nope", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert unknown.status_code == 404


def test_background_requests_are_relayed_to_the_presets_model(
    make_proxy: ProxyFactory, upstream: tuple[ScriptedUpstream, str]
) -> None:
    scripted, _ = upstream
    title = open_webui_task("title", [("user", "Plot sales."), ("assistant", "Done.")])
    with make_proxy(presets=PRESETS) as proxy:
        # Open WebUI's shape: model from /v1/models, stream, user, its task header.
        response = httpx.post(
            proxy + "/v1/chat/completions",
            headers={"X-OpenWebUI-Task": "title_generation"},
            json={
                "model": "jetty/data-science",
                "stream": False,
                "user": "someone",
                "messages": [{"role": "user", "content": title}],
            },
        )
        assert response.status_code == 200
        assert "x-jetty-trajectory-id" not in response.headers
        forwarded = scripted.seen[-1].json
        assert forwarded["model"] == "echo"
        assert "jetty" not in forwarded
        # Without the header (Open WebUI 0.12 sends none), the prompt itself gives it away.
        plain = httpx.post(
            proxy + "/v1/chat/completions",
            json={"model": "jetty/data-science", "messages": [{"role": "user", "content": title}]},
        )
        assert plain.status_code == 200
        assert len(scripted.seen) == 2


def test_a_turn_with_an_attached_file_goes_to_the_run_path(
    make_proxy: ProxyFactory, upstream: tuple[ScriptedUpstream, str]
) -> None:
    scripted, _ = upstream
    # Open WebUI's retrieval template starts like its housekeeping prompts ("### Task:").
    turn = open_webui_rag("Plot sales by region.", [("sales.csv", "region,total\nNorth,10")])
    with make_proxy(presets=PRESETS) as proxy:
        response = httpx.post(
            proxy + "/v1/chat/completions",
            json={
                "model": "jetty/data-science",
                "stream": True,
                "messages": [{"role": "user", "content": turn}],
            },
        )
    # The preset names no image and the server has none: refused by the run path, with a 400
    # naming the field, before anything starts. The upstream never saw it.
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "jetty.image"
    assert scripted.seen == []
