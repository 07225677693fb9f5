"""Web pages and a server without keys: forged and rebound requests are refused, programs and
allowed origins are not. Over a live server, with the headers browsers send."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from proxy.browsers import BrowserGuard, normalise_origin
from proxy.errors import Forbidden
from tests.api.conftest import ProxyFactory
from tests.support.openapi import validate
from tests.support.scripted_openai import ScriptedUpstream
from tests.support.stores import create_key

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
RUN = {**CHAT, "jetty": {"runbook": True, "network_enabled": True}}
EVIL = "http://evil.example"


def _refused(response: httpx.Response, code: str) -> None:
    assert response.status_code == 403, response.text
    validate("ErrorResponse", response.json())
    assert response.json()["error"]["code"] == code
    assert response.headers["x-should-retry"] == "false"


def test_a_page_cannot_post_to_a_server_without_keys(
    proxy: str, upstream: tuple[ScriptedUpstream, str]
) -> None:
    chat = proxy + "/v1/chat/completions"
    # The form a page can send without asking: text/plain, its body valid JSON.
    form = {"content-type": "text/plain;charset=UTF-8"}
    _refused(httpx.post(chat, content=json.dumps(CHAT), headers=form), "cross_site_request")
    urlencoded = {"content-type": "application/x-www-form-urlencoded"}
    _refused(httpx.post(chat, content=json.dumps(CHAT), headers=urlencoded), "cross_site_request")
    # A modern browser says where the request comes from.
    _refused(httpx.post(chat, json=CHAT, headers={"origin": EVIL}), "cross_site_request")
    _refused(httpx.post(chat, json=RUN, headers={"origin": "null"}), "cross_site_request")
    marked = {"sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors"}
    _refused(httpx.post(chat, json=RUN, headers=marked), "cross_site_request")
    same_site = {"origin": "http://localhost:3000", "sec-fetch-site": "same-site"}
    _refused(httpx.post(chat, json=CHAT, headers=same_site), "cross_site_request")
    upload = httpx.post(
        proxy + "/api/v1/sandbox/upload",
        files={"file": ("x.txt", b"data")},
        headers={"origin": EVIL},
    )
    _refused(upload, "cross_site_request")
    patch = httpx.patch(
        proxy + "/api/v1/collections/default/environment",
        json={"variables": {"A": "1"}},
        headers={"origin": EVIL},
    )
    _refused(patch, "cross_site_request")
    assert upstream[0].seen == []
    assert httpx.get(proxy + "/api/v1/list-files").json()["files"] == []
    environment = httpx.get(proxy + "/api/v1/collections/default/environment").json()
    assert environment["variables"] == {}


def test_a_rebound_host_name_is_refused(proxy: str) -> None:
    port = proxy.rsplit(":", 1)[1]
    # DNS rebinding: the page's own name now points at 127.0.0.1; so it reads as same-origin.
    rebound = {"host": f"evil.example:{port}", "origin": f"http://evil.example:{port}"}
    _refused(httpx.get(proxy + "/v1/models", headers=rebound), "unexpected_host")
    _refused(
        httpx.post(proxy + "/v1/chat/completions", json=CHAT, headers=rebound), "unexpected_host"
    )
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"app.localhost:{port}", "[::1]"):
        assert httpx.get(proxy + "/v1/models", headers={"host": host}).status_code == 200, host
    # The same origin as the Host a browser used is the server's own.
    own = {"origin": f"http://localhost:{port}", "host": f"localhost:{port}"}
    assert httpx.post(proxy + "/v1/chat/completions", json=CHAT, headers=own).status_code == 200


def test_programs_and_result_links_still_work(proxy: str) -> None:
    sdk = openai.OpenAI(base_url=proxy + "/v1", api_key="anything", max_retries=0)
    assert sdk.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    assert httpx.post(proxy + "/v1/chat/completions", json=CHAT).status_code == 200
    stored = httpx.post(proxy + "/api/v1/sandbox/upload", files={"file": ("x.txt", b"data")})
    assert stored.status_code == 201
    # A page may link to a result: a navigation reads nothing into the page.
    link = httpx.get(
        proxy + "/api/v1/file/" + stored.json()["storage_path"],
        headers={"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"},
    )
    assert link.status_code == 200 and link.content == b"data"


def test_an_allowed_origin_may_use_the_server(make_proxy: ProxyFactory) -> None:
    ui = "http://localhost:3000"
    with make_proxy(allowed_origins=[ui + "/"]) as proxy:
        preflight = httpx.options(
            proxy + "/v1/chat/completions",
            headers={
                "origin": ui,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ui
        headers = {"origin": ui, "sec-fetch-site": "same-site"}
        answer = httpx.post(proxy + "/v1/chat/completions", json=CHAT, headers=headers)
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == ui
        assert "x-request-id" in answer.headers["access-control-expose-headers"]
        other = {"origin": "http://localhost:3001", "sec-fetch-site": "same-site"}
        _refused(
            httpx.post(proxy + "/v1/chat/completions", json=CHAT, headers=other),
            "cross_site_request",
        )


def test_a_server_with_keys_leaves_pages_to_the_keys(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    key = create_key(f"sqlite:///{tmp_path / 'data' / 'jetty-proxy.db'}", "acme")
    with make_proxy() as proxy:
        headers = {"authorization": f"Bearer {key}", "origin": EVIL, "host": "evil.example"}
        answer = httpx.post(proxy + "/v1/chat/completions", json=CHAT, headers=headers)
        assert answer.status_code == 200


def test_public_base_url_and_allowed_hosts_are_known_names() -> None:
    guard = BrowserGuard(allowed_hosts=["proxy.internal", "jetty.example"])
    guard.check({"host": "proxy.internal:8000"}, "POST")
    guard.check({"host": "JETTY.example."}, "GET")
    with pytest.raises(Forbidden):
        guard.check({"host": "other.example"}, "GET")
    # Bound beyond loopback, the server's names are unknown: only pages are checked.
    open_bind = BrowserGuard(check_host=False)
    open_bind.check({"host": "10.0.0.5:8000"}, "POST")
    with pytest.raises(Forbidden):
        open_bind.check({"host": "10.0.0.5:8000", "origin": EVIL}, "POST")


def test_origins_are_normalised() -> None:
    assert normalise_origin("HTTP://LocalHost:3000/") == "http://localhost:3000"
    assert normalise_origin("https://ui.example:443") == "https://ui.example"
    assert normalise_origin("http://[::1]:3000") == "http://[::1]:3000"
    for bad in ("localhost:3000", "ftp://x", "http://x/path", "*"):
        with pytest.raises(ValueError, match="not an origin"):
            normalise_origin(bad)
