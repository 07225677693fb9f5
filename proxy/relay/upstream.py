"""The connection to OpenAI-compatible upstream providers.

One pooled :class:`httpx.AsyncClient` per process. httpx errors are mapped to
the proxy's errors here, so nothing above this module sees httpx exceptions.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from proxy.errors import (
    ProxyError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    normalise_error_body,
)
from proxy.settings import Settings

logger = logging.getLogger("proxy.relay")

# Response headers worth passing back to the client from the upstream.
_PASSED_RESPONSE_HEADERS = (
    "x-should-retry",
    "retry-after",
    "retry-after-ms",
    "openai-processing-ms",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)


def passed_headers(headers: httpx.Headers) -> dict[str, str]:
    return {name: headers[name] for name in _PASSED_RESPONSE_HEADERS if name in headers}


@dataclass
class UpstreamResponse:
    """An open upstream response whose status was a success; the body may still be streaming.

    ``select_headers`` picks the response headers passed on to the client (OpenAI's by default).
    """

    response: httpx.Response
    select_headers: Callable[[httpx.Headers], dict[str, str]] = passed_headers

    @property
    def status_code(self) -> int:
        return self.response.status_code

    @property
    def headers(self) -> dict[str, str]:
        return self.select_headers(self.response.headers)

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives; a broken connection becomes a :class:`ProxyError`."""
        try:
            async for piece in self.response.aiter_bytes():
                yield piece
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout("The upstream stopped sending mid-response.") from exc
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(
                f"The upstream connection failed mid-response: {type(exc).__name__}."
            ) from exc

    async def read(self) -> bytes:
        chunks = [piece async for piece in self.aiter_bytes()]
        return b"".join(chunks)

    async def aclose(self) -> None:
        await self.response.aclose()


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
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
            headers={"accept-encoding": "identity"},
        )
        self._models_cache: tuple[float, list[dict[str, Any]]] | None = None

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, model: str, path: str, body: bytes) -> UpstreamResponse:
        """POST ``body`` to ``path`` on the model's upstream; raise on any error status.

        The response is returned unread so a stream can be relayed as it arrives;
        the caller must ``aclose()`` it.
        """
        base_url, key = self._settings.route_for(model)
        request = self._client.build_request(
            "POST", base_url + path, content=body, headers=_auth_headers(key)
        )
        response = await self._send(request)
        if response.status_code >= 400:
            try:
                raw = await response.aread()
            except httpx.HTTPError:
                raw = b""
            finally:
                await response.aclose()
            raise UpstreamError(
                response.status_code,
                normalise_error_body(response.status_code, raw),
                passed_headers(response.headers),
            )
        return UpstreamResponse(response)

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
            response = await self._send(request)
            raw = await response.aread()
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

    async def _send(self, request: httpx.Request) -> httpx.Response:
        return await send_streaming(self._client, request)


async def send_streaming(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """Send ``request`` and return the response with its body unread.

    Failing to connect or to get an answer raises :class:`UpstreamUnavailable` or
    :class:`UpstreamTimeout`; the caller must ``aclose()`` the response.
    """
    try:
        return await client.send(request, stream=True)
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(f"Upstream did not answer in time ({request.url.host}).") from exc
    except httpx.HTTPError as exc:
        raise UpstreamUnavailable(
            f"Upstream unreachable ({request.url.host}): {type(exc).__name__}."
        ) from exc


def _auth_headers(key: SecretStr | None) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key.get_secret_value()}"
    return headers
