"""The origin links are built on: public_base_url, the request, trusted forwarding headers."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from proxy.api.origin import Origins


def request(headers: dict[str, str], *, peer: str = "127.0.0.1", scheme: str = "http") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in {"host": "proxy:8000", **headers}.items()]
    scope = {
        "type": "http",
        "method": "GET",
        "scheme": scheme,
        "path": "/v1/chat/completions",
        "root_path": "",
        "query_string": b"",
        "headers": raw,
        "client": (peer, 50000),
        "server": ("proxy", 8000),
    }
    return Request(scope)


FORWARDED = {"x-forwarded-proto": "https", "x-forwarded-host": "jp.example.com"}


def test_public_base_url_wins() -> None:
    origins = Origins("https://jetty.example.com/", ["127.0.0.1"])
    assert origins.of(request(FORWARDED)) == "https://jetty.example.com"


def test_without_configuration_the_request_says_where_it_went() -> None:
    assert Origins(None).of(request({})) == "http://proxy:8000"
    # Anyone can send forwarding headers: they are ignored unless the peer is trusted.
    assert Origins(None).of(request(FORWARDED)) == "http://proxy:8000"
    assert Origins(None, ["10.0.0.0/8"]).of(request(FORWARDED)) == "http://proxy:8000"


def test_a_trusted_proxy_forwards_scheme_and_host() -> None:
    origins = Origins(None, ["10.0.0.0/8", "::1"])
    assert origins.of(request(FORWARDED, peer="10.1.2.3")) == "https://jp.example.com"
    assert origins.of(request({"x-forwarded-proto": "https"}, peer="::1")) == "https://proxy:8000"
    forwarded = {"forwarded": 'for=192.0.2.60;proto=https;host="jp.example.com:8443", for=10.0.0.1'}
    assert origins.of(request(forwarded, peer="10.1.2.3")) == "https://jp.example.com:8443"
    # Several values (a chain of proxies): the first is the client's.
    chained = {"x-forwarded-proto": "https, http", "x-forwarded-host": "a.example, b.internal"}
    assert origins.of(request(chained, peer="10.1.2.3")) == "https://a.example"


@pytest.mark.parametrize(
    "headers",
    [
        {"x-forwarded-proto": "javascript", "x-forwarded-host": "jp.example.com"},
        {"x-forwarded-proto": "https", "x-forwarded-host": "evil.example/path"},
        {"x-forwarded-host": "a b"},
        {"forwarded": "proto=https;host=evil.example@x"},
    ],
)
def test_malformed_forwarding_headers_are_ignored(headers: dict[str, str]) -> None:
    assert Origins(None, ["10.0.0.0/8"]).of(request(headers, peer="10.1.2.3")) == (
        "http://proxy:8000"
    )
