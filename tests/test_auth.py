"""When keys are required: fixed at start, and never opened again by revoking keys."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from proxy.app import create_app
from proxy.cli import main
from proxy.settings import Settings
from tests.support.live import serve, serve_process
from tests.support.scripted_openai import ScriptedUpstream

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


def _create_key(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """A key for collection acme, made with the CLI; returns it and its id."""
    capsys.readouterr()
    assert main(["keys", "create", "--collection", "acme", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr()
    key_id = out.err.split("Created key ")[1].split()[0]
    return out.out.strip(), key_id


def _revoke(data_dir: Path, key_id: str) -> None:
    assert main(["keys", "revoke", key_id, "--data-dir", str(data_dir)]) == 0


def _wait_for_status(url: str, status: int, headers: dict[str, str]) -> None:
    """Return once ``url`` answers ``status`` (auth decisions are cached for a moment)."""
    deadline = time.monotonic() + 30
    while (answer := httpx.get(url, headers=headers).status_code) != status:
        assert time.monotonic() < deadline, f"{url} still answers {answer}"
        time.sleep(0.1)


def test_revoking_the_last_key_keeps_a_server_started_with_keys_closed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    upstream = ScriptedUpstream()
    key, key_id = _create_key(data, capsys)
    with (
        serve(upstream.app()) as upstream_url,
        serve_process(
            env={
                "JETTY_PROXY_DATA_DIR": str(data),
                "JETTY_PROXY_UPSTREAM_URL": upstream_url + "/v1",
                "JETTY_PROXY_UPSTREAM_API_KEY": "sk-upstream-secret",
                "JETTY_PROXY_BACKEND": "local",
            }
        ) as served,
    ):
        bearer = {"authorization": f"Bearer {key}"}
        assert httpx.get(served.url + "/v1/models", headers=bearer).status_code == 200
        assert httpx.get(served.url + "/v1/models").status_code == 401

        _revoke(data, key_id)
        # The revoked key stops working (within the auth cache's 2 s) ...
        _wait_for_status(served.url + "/v1/models", 401, headers=bearer)
        # ... and with no key left, the server is still closed to everyone.
        missing = httpx.get(served.url + "/v1/models")
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "missing_api_key"
        chat = httpx.post(served.url + "/v1/chat/completions", json=CHAT)
        assert chat.status_code == 401
        listing = httpx.get(served.url + "/api/v1/db/trajectories/acme/_chat")
        assert listing.status_code == 401
    assert upstream.seen == []
    assert "API keys required" in served.err


def test_a_server_started_without_keys_turns_auth_on_and_keeps_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    settings = Settings(data_dir=data, auth_cache_seconds=0, backend="local")
    with serve(create_app(settings)) as url:
        assert httpx.get(url + "/v1/models").status_code == 200  # the single local user
        key, key_id = _create_key(data, capsys)
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/v1/models", headers={"x-api-key": key}).status_code == 200
        _revoke(data, key_id)
        assert httpx.get(url + "/v1/models", headers={"x-api-key": key}).status_code == 401
        assert httpx.get(url + "/v1/models").status_code == 401


@pytest.mark.parametrize(("insecure", "status"), [(False, 401), (True, 200)])
def test_a_server_bound_beyond_loopback_serves_no_local_user_unless_told(
    tmp_path: Path, insecure: bool, status: int
) -> None:
    # Settings say where the server is bound; the test still serves it on loopback.
    settings = Settings(
        data_dir=tmp_path / "data",
        host="0.0.0.0",
        insecure_no_auth=insecure,
        auth_cache_seconds=0,
        backend="local",
    )
    with serve(create_app(settings)) as url:
        assert httpx.get(url + "/v1/models").status_code == status
