"""Bad days at the HTTP edge, as real faults: the link to a real PostgreSQL is cut under
traffic, then restored; a real filesystem fills up, then frees space."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.support.full_disk import fill, small_filesystem
from tests.support.live import serve_process
from tests.support.openapi import validate
from tests.support.scripted_openai import ScriptedUpstream
from tests.support.stores import create_key, fresh_database, live_proxy
from tests.support.tcp_cut import CuttableLink

#: The longest a request may take here: a bound against hanging, far above the database
#: timeout the proxy is given, not a measure.
PATIENCE = 20.0


def _chat(proxy: str, key: str, text: str) -> httpx.Response:
    return httpx.post(
        proxy + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={
            "model": "echo",
            "messages": [{"role": "user", "content": text}],
            "jetty": {"collection": "acme"},
        },
        timeout=PATIENCE,
    )


def _eventually(check: Callable[[], Any]) -> Any:
    """``check()``'s first true answer, polling (the proxy retries on its own schedule)."""
    deadline = time.monotonic() + 60
    while not (answer := check()):
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.1)
    return answer


def _metric(proxy: str, name: str) -> float:
    for line in httpx.get(proxy + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    validate("ErrorResponse", response.json())
    assert response.json()["error"]["code"] == "service_unavailable"
    assert response.headers["x-should-retry"] == "true"


@pytest.mark.postgres
def test_a_database_outage_fails_requests_fast_and_loses_no_chat_record(
    tmp_path: Path, upstream: tuple[ScriptedUpstream, str]
) -> None:
    with fresh_database("postgres", tmp_path) as direct:
        key = create_key(direct, "acme")
        parts = urlsplit(direct)
        assert parts.hostname and parts.port
        with CuttableLink(parts.hostname, parts.port).running() as link:
            netloc = f"{parts.username}:{parts.password}@127.0.0.1:{link.port}"
            with live_proxy(
                urlunsplit(parts._replace(netloc=netloc)),
                tmp_path / "data",
                upstream_url=upstream[1],
                upstream_api_key="sk-upstream",
                database_timeout=1.0,
            ) as proxy:
                listing = proxy + "/api/v1/db/trajectories/acme/_chat"
                bearer = {"authorization": f"Bearer {key}"}

                def recorded() -> int:
                    answer = httpx.get(listing, headers=bearer, timeout=PATIENCE)
                    return int(answer.json()["total"]) if answer.status_code == 200 else 0

                assert _chat(proxy, key, "before").status_code == 200
                _eventually(lambda: recorded() == 1)

                link.cut()
                # A known key goes on working: relayed chats do not need the database.
                for n in range(5):
                    assert _chat(proxy, key, f"during {n}").status_code == 200
                # Everything that needs it fails at once, asking the client to retry.
                _unavailable(_chat(proxy, "jp-a-key-never-seen", "who"))
                _unavailable(httpx.get(listing, headers=bearer, timeout=PATIENCE))
                ready = httpx.get(proxy + "/readyz", timeout=PATIENCE)
                assert ready.status_code == 503
                assert ready.json()["status"] == "unavailable" and ready.json()["blobs"] == "ok"
                _eventually(lambda: _metric(proxy, "jetty_proxy_chat_records_retrying") == 5)

                link.restore()
                _eventually(lambda: recorded() == 6)
                assert _metric(proxy, "jetty_proxy_chat_records_retrying") == 0
                assert _metric(proxy, "jetty_proxy_chat_records_dropped_total") == 0
                assert httpx.get(proxy + "/readyz").json()["status"] == "ok"
                metrics = httpx.get(proxy + "/metrics").text
    assert 'status="500"' not in metrics


def _insufficient_storage(response: httpx.Response) -> None:
    assert response.status_code == 507, response.text
    validate("ErrorResponse", response.json())
    assert response.json()["error"]["code"] == "insufficient_storage"


def test_a_full_disk_refuses_writes_with_507_keeps_nothing_and_loses_no_chat_record(
    tmp_path: Path, upstream: tuple[ScriptedUpstream, str]
) -> None:
    with small_filesystem(tmp_path / "disk") as disk:
        data, spool = disk / "data", disk / "tmp"
        spool.mkdir()
        environment = {
            "JETTY_PROXY_DATA_DIR": str(data),
            "JETTY_PROXY_UPSTREAM_URL": upstream[1],
            "JETTY_PROXY_UPSTREAM_API_KEY": "sk-upstream",
            "JETTY_PROXY_BACKEND": "local",
            # A run must never get as far as its model: none is reachable.
            "JETTY_PROXY_ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
            "JETTY_PROXY_ANTHROPIC_API_KEY": "sk-none",
            "JETTY_PROXY_MIN_FREE_DISK_BYTES": str(4 * 1024 * 1024),
            # Where Starlette spools uploads past 1 MiB: the same full disk.
            "TMPDIR": str(spool),
        }
        with serve_process(env=environment) as served:
            proxy = served.url
            chat = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
            listing = proxy + "/api/v1/db/trajectories/default/_chat"

            def recorded() -> int:
                return int(httpx.get(listing).json()["total"])

            assert httpx.post(proxy + "/v1/chat/completions", json=chat).status_code == 200
            _eventually(lambda: recorded() == 1)
            assert httpx.get(proxy + "/readyz").json()["status"] == "ok"

            filler = fill(disk)
            ready = httpx.get(proxy + "/readyz")
            assert ready.status_code == 503 and ready.json()["free_disk_bytes"] == 0
            # Small files (spooled in memory) fail in the blob store, large ones already
            # in the spool: both a 507, through either upload route.
            for size in (100_000, 2_000_000):
                upload = {"file": ("data.bin", b"x" * size)}
                _insufficient_storage(
                    httpx.post(proxy + "/api/v1/sandbox/upload", files=upload, timeout=PATIENCE)
                )
                _insufficient_storage(
                    httpx.post(
                        proxy + "/v1/files",
                        files=upload,
                        data={"purpose": "user_data"},
                        timeout=PATIENCE,
                    )
                )
            _insufficient_storage(
                httpx.patch(
                    proxy + "/api/v1/collections/default/environment",
                    json={"variables": {"A": "1"}},
                )
            )
            runbook = {
                "model": "claude-sonnet-4-6",
                "messages": [
                    {"role": "system", "content": "# Runbook\nWrite summary.md."},
                    {"role": "user", "content": "Execute the runbook."},
                ],
                "jetty": {"runbook": True, "task": "full", "image": "local"},
            }
            run = httpx.post(proxy + "/v1/chat/completions", json=runbook, timeout=PATIENCE)
            _insufficient_storage(run)
            runs = httpx.get(proxy + "/api/v1/db/trajectories/default/full").json()
            assert runs["total"] == 0
            # Chats are answered; their records wait for space.
            for _ in range(3):
                assert httpx.post(proxy + "/v1/chat/completions", json=chat).status_code == 200
            _eventually(lambda: _metric(proxy, "jetty_proxy_chat_records_retrying") == 3)
            # Nothing of the refused uploads is left: no blob, no spool file, no record.
            for place in (data / "blobs", spool):
                assert [path for path in place.rglob("*") if path.is_file()] == []
            assert httpx.get(proxy + "/api/v1/list-files").json()["files"] == []

            filler.unlink()
            _eventually(lambda: recorded() == 4)
            assert _metric(proxy, "jetty_proxy_chat_records_dropped_total") == 0
            assert httpx.get(proxy + "/readyz").json()["status"] == "ok"
            stored = httpx.post(proxy + "/api/v1/sandbox/upload", files={"file": ("a", b"a")})
            assert stored.status_code == 201
            assert 'status="500"' not in httpx.get(proxy + "/metrics").text
