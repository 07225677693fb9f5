"""The connection to OpenAI-compatible upstream providers.

Chat completions go out through :mod:`proxy.relay.http1`, a small HTTP/1.1 client that
relays a stream at a fraction of httpx's cost per chunk, whenever it can serve the upstream:
a plain ``http://`` or ``https://`` URL that no proxy from the environment applies to.
Everything else (model listings, upstreams behind a proxy, an injected test transport)
goes through one pooled :class:`httpx.AsyncClient`. The errors of both, and an upstream's
error statuses, become the proxy's errors in one place, :meth:`PendingUpstream.open`, which
every relay (chat completions and the agents' provider relays) opens its upstream with.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from proxy import __version__
from proxy.errors import ProxyError, UpstreamTimeout, UpstreamUnavailable
from proxy.relay import http1
from proxy.relay.wire import CHAT, HeaderFilter, Wire, passed_headers, passed_raw_headers
from proxy.settings import Settings

logger = logging.getLogger("proxy.relay")

# Idle upstream connections are dropped after this long: below the 5 s idle timeout of
# uvicorn- and Node-based servers (vLLM, LiteLLM, many gateways), so that the proxy
# retires a connection before such a server closes it under a request in flight.
KEEPALIVE_EXPIRY = 4.0


@dataclass
class UpstreamResponse:
    """An open upstream response whose status was a success; the body may still be streaming.

    ``response`` comes from httpx or from :mod:`proxy.relay.http1`; ``select_headers`` picks
    the response headers passed on to the client (Chat Completions' by default).
    """

    response: httpx.Response | http1.Response
    select_headers: HeaderFilter = passed_headers
    _pieces: AsyncIterator[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def status_code(self) -> int:
        return self.response.status_code

    @property
    def headers(self) -> dict[str, str]:
        response = self.response
        if self.select_headers is passed_headers and isinstance(response, http1.Response):
            return passed_raw_headers(response.raw_headers)
        return self.select_headers(response.headers)

    @property
    def complete(self) -> bool:
        """True once the body is known to be all read: the next :meth:`receive` is ``b""``.

        Only :mod:`proxy.relay.http1` knows this ahead of that call; from httpx it stays False.
        """
        return isinstance(self.response, http1.Response) and self.response.complete

    async def receive(self) -> bytes:
        """The next piece of the body, ``b""`` at its end; a broken connection raises a
        :class:`ProxyError`.

        From :mod:`proxy.relay.http1` a piece is everything that has arrived since the
        last call, so a burst of small chunks comes out in one piece.
        """
        try:
            if isinstance(self.response, http1.Response):
                return await self.response.receive()
            if self._pieces is None:
                self._pieces = _body_of(self.response)
            return await anext(self._pieces, b"")
        except (httpx.TimeoutException, http1.TransferTimeout) as exc:
            raise UpstreamTimeout("The upstream stopped sending mid-response.") from exc
        except (httpx.HTTPError, http1.HTTPError) as exc:
            raise UpstreamUnavailable(
                f"The upstream connection failed mid-response: {type(exc).__name__}."
            ) from exc

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives (see :meth:`receive`)."""
        while piece := await self.receive():
            yield piece

    async def read(self) -> bytes:
        pieces = []
        while piece := await self.receive():
            pieces.append(piece)
        return b"".join(pieces)

    async def aclose(self) -> None:
        await self.response.aclose()


def _body_of(response: httpx.Response) -> AsyncIterator[bytes]:
    # Without a content-encoding there is nothing to decode: skip httpx's decoder layer
    # (unless the body was read already, as a test transport's may be).
    identity = response.headers.get("content-encoding", "identity") == "identity"
    if identity and not response.is_stream_consumed:
        return response.aiter_raw()
    return response.aiter_bytes()


class Upstreams:
    """Sends requests to the upstream chosen by model name."""

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None):
        self._settings = settings
        timeout = httpx.Timeout(
            connect=settings.upstream_connect_timeout,
            read=settings.upstream_read_timeout,
            write=settings.upstream_read_timeout,
            pool=settings.upstream_connect_timeout,
        )
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=None,
                max_keepalive_connections=256,
                keepalive_expiry=KEEPALIVE_EXPIRY,
            ),
            headers={"accept-encoding": "identity"},
        )
        # An injected transport (tests, mostly) must see every request.
        self._pool = (
            None
            if transport is not None
            else http1.ConnectionPool(
                ssl_context=_ssl_context(),
                connect_timeout=settings.upstream_connect_timeout,
                read_timeout=settings.upstream_read_timeout,
                keepalive_expiry=KEEPALIVE_EXPIRY,
                user_agent=f"jetty-proxy/{__version__}",
            )
        )
        self._env_proxies = urllib.request.getproxies_environment()
        self._direct: dict[str, bool] = {}
        # The head of a POST to each URL with its key, up to the body's length.
        self._targets: dict[str, tuple[SecretStr | None, http1.Target]] = {}
        self._models_cache: tuple[float, list[dict[str, Any]]] | None = None

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        await self._client.aclose()

    async def send(self, model: str, path: str, body: bytes) -> UpstreamResponse:
        """POST ``body`` to ``path`` on the model's upstream; raise on any error status.

        The response is returned unread so a stream can be relayed as it arrives;
        the caller must ``aclose()`` it.
        """
        return await self.begin(model, path, body).open()

    def begin(self, model: str, path: str, body: bytes) -> PendingUpstream:
        """Like :meth:`send`, in two steps: the request goes out now when it can (on an idle
        connection), so that the upstream works on it while the caller gets ready to relay
        the answer; :meth:`PendingUpstream.open` then waits for that answer."""
        base_url, key = self._settings.route_for(model)
        url = base_url + path
        if self._pool is not None and self._is_direct(base_url):
            cached = self._targets.get(url)
            if cached is None or cached[0] is not key:
                if len(self._targets) >= 1024:
                    self._targets.clear()
                headers = list(_auth_headers(key).items())
                cached = self._targets[url] = (key, self._pool.target("POST", url, headers))
            exchange = self._pool.begin_to(cached[1], body)
            return PendingUpstream(exchange.response, exchange.abandon, url)
        request = self._client.build_request("POST", url, content=body, headers=_auth_headers(key))
        return pending_request(self._client, request)

    def _is_direct(self, base_url: str) -> bool:
        """Whether :mod:`proxy.relay.http1` can serve ``base_url`` as httpx would."""
        direct = self._direct.get(base_url)
        if direct is None:
            parts = urlsplit(base_url)
            proxied = ("all" in self._env_proxies or parts.scheme in self._env_proxies) and not (
                urllib.request.proxy_bypass(parts.hostname or "")
            )
            direct = parts.scheme in ("http", "https") and not parts.username and not proxied
            self._direct[base_url] = direct
        return direct

    async def list_models(self) -> list[dict[str, Any]]:
        """Models of every configured upstream, merged by id; failures are logged, not fatal."""
        now = time.monotonic()
        if self._models_cache and now - self._models_cache[0] < self._settings.models_cache_seconds:
            return self._models_cache[1]
        merged: dict[str, dict[str, Any]] = {}
        for base_url, key in self._settings.all_upstreams():
            for model in await self._models_of(base_url, key):
                merged.setdefault(str(model["id"]), model)
        models = list(merged.values())
        self._models_cache = (now, models)
        return models

    async def _models_of(self, base_url: str, key: SecretStr | None) -> list[dict[str, Any]]:
        request = self._client.build_request(
            "GET", base_url + "/models", headers=_auth_headers(key), timeout=10.0
        )
        try:
            response = await pending_request(self._client, request).open()
            try:
                raw = await response.read()
            finally:
                await response.aclose()
            data = json.loads(raw).get("data") if response.status_code == 200 else None
        except (ProxyError, ValueError, AttributeError, httpx.HTTPError) as exc:
            logger.warning("could not list models of %s: %s", base_url, exc)
            return []
        if not isinstance(data, list):
            logger.warning("upstream %s answered /models without a model list", base_url)
            return []
        return [
            {
                "id": str(m["id"]),
                "object": "model",
                "created": int(m.get("created") or 0),
                "owned_by": str(m.get("owned_by") or "upstream"),
            }
            for m in data
            if isinstance(m, dict) and "id" in m
        ]


class PendingUpstream:
    """A request to an upstream, sent or about to be: :meth:`open` it, or :meth:`abandon` it.

    ``answer`` waits for the upstream's response (from httpx or :mod:`proxy.relay.http1`) to
    the request for ``url``; ``wire`` says what its error statuses and headers become.
    """

    __slots__ = ("_answer", "_url", "_wire", "abandon")

    def __init__(
        self,
        answer: Callable[[], Awaitable[httpx.Response | http1.Response]],
        abandon: Callable[[], None],
        url: str | httpx.URL,
        wire: Wire = CHAT,
    ):
        self._answer = answer
        self._url = url
        self._wire = wire
        self.abandon = abandon

    async def open(self) -> UpstreamResponse:
        """The upstream's answer, unread; the caller must ``aclose()`` it.

        No answer raises :class:`UpstreamTimeout` or :class:`UpstreamUnavailable`; an error
        status raises the wire's :class:`~proxy.errors.UpstreamError`.
        """
        try:
            response = await self._answer()
        except (httpx.TimeoutException, http1.ConnectTimeout, http1.TransferTimeout) as exc:
            raise UpstreamTimeout(f"Upstream did not answer in time ({self._host()}).") from exc
        except (httpx.HTTPError, http1.HTTPError) as exc:
            raise UpstreamUnavailable(
                f"Upstream unreachable ({self._host()}): {type(exc).__name__}."
            ) from exc
        select_headers = self._wire.select_headers
        if response.status_code >= 400:
            try:
                raw = await response.aread()
            except (httpx.HTTPError, http1.HTTPError):
                raw = b""
            finally:
                await response.aclose()
            headers = select_headers(response.headers)
            raise self._wire.upstream_error(response.status_code, raw, headers)
        return UpstreamResponse(response, select_headers)

    def _host(self) -> str:
        if isinstance(self._url, httpx.URL):
            return self._url.host
        return urlsplit(self._url).hostname or self._url


def pending_request(
    client: httpx.AsyncClient, request: httpx.Request, wire: Wire = CHAT
) -> PendingUpstream:
    """``request``, sent through ``client`` once it is opened."""
    return PendingUpstream(lambda: client.send(request, stream=True), _nothing, request.url, wire)


def _nothing() -> None:
    pass


def _ssl_context() -> ssl.SSLContext:
    """httpx's default verification (certifi, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``)."""
    context = httpx.create_ssl_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


def _auth_headers(key: SecretStr | None) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key.get_secret_value()}"
    return headers
