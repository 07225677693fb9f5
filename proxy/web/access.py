"""Who is looking at a page, and whether a page request came from this server's own pages.

The login cookie holds the key a browser signed in with; only the pages read it (the API
routes never look at cookies, so a cookie cannot make another site's request count). Form
posts and the cancel call must come from this server's pages: ``Sec-Fetch-Site`` and
``Origin`` say where a browser request came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from starlette.requests import Request

from proxy.api.context import Services
from proxy.auth import Principal
from proxy.errors import ProxyError

KEY_COOKIE = "jetty_key"


class CrossSiteRefused(ProxyError):
    """A state-changing page request that did not come from this server's own pages."""

    status_code = 403
    error_type = "permission_error"
    code = "cross_site_request"


async def viewer(request: Request, services: Services) -> Principal:
    """Who is looking: the request's key, else the login cookie's (401 when needed)."""
    headers: Mapping[str, str] = request.headers
    cookie = request.cookies.get(KEY_COOKIE)
    if cookie and not (headers.get("authorization") or headers.get("x-api-key")):
        headers = {**headers, "authorization": f"Bearer {cookie}"}
    return await services.authenticator.authenticate(headers, request.method)


def wants_html(request: Request) -> bool:
    """A browser navigating (``Accept: text/html``), as opposed to an API client."""
    return "text/html" in request.headers.get("accept", "")


def same_site(request: Request, services: Services) -> None:
    """Refuse form posts and fetches that another site's page made the browser send."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise CrossSiteRefused("This request must come from this server's own pages.")
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        allowed = {request.headers.get("host", ""), urlsplit(services.origins.of(request)).netloc}
        if urlsplit(origin).netloc not in allowed:
            raise CrossSiteRefused("This request must come from this server's own pages.")


def local_path(value: str | None) -> str:
    """A redirect target on this server only (``/…``, never ``//host`` or a URL)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/login"
    return value
