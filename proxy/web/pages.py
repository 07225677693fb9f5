"""The pages: a run's page, run lists, the key login, and the static files they use.

Who may see what:

* a run's page: a signed link to that run (``/s/{token}/runs/…``, what answers link to), or
  a key allowed to use its collection (``Authorization``, or the login cookie), or anyone
  while authentication is off (no keys, loopback);
* run lists (``/runs/{collection}`` and ``/runs/{collection}/{task}``): a key, or anyone
  while authentication is off. A browser gets a key into the server with the login form:
  the key goes into an ``HttpOnly``, ``SameSite=Strict`` cookie for the browser session,
  read by these pages only (the API routes never look at cookies). The links a page hands
  the browser (events, files, zip) are signed for the run, so its script needs no key;
* cancelling from a run's page: a key (or authentication off), never a signed link alone.

Every page is sent with a strict Content-Security-Policy (scripts from this server only, no
inline script, no plugins, no framing, no ``<base>``), ``nosniff``, and a referrer only for
this server's own pages (a signed link never leaks to a site an answer links to).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import resources
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from proxy.api.context import Services, services_of
from proxy.api.params import path_name, query, trajectory_id
from proxy.api.responses import error_response
from proxy.api.trajectories import ListQuery, change_status, find_trajectory
from proxy.auth import Principal
from proxy.errors import NotFound, ProxyError, Unauthorized
from proxy.links import LinkRejected, RunLinks
from proxy.store.records import TRAJECTORY_STATUSES, Trajectory
from proxy.web.access import (
    KEY_COOKIE,
    CrossSiteRefused,
    local_path,
    same_site,
    viewer,
    wants_html,
)
from proxy.web.markdown import SafeMarkdown
from proxy.web.previews import PREVIEW_FILES, preview
from proxy.web.timeline import fold

CANCEL_HEADER = "x-requested-with"
PAGE_HEADERS = MappingProxyType(
    {
        "content-security-policy": (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
            " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none';"
            " object-src 'none'"
        ),
        "x-content-type-options": "nosniff",
        "referrer-policy": "same-origin",
        "x-frame-options": "DENY",
        "cache-control": "no-store",
    }
)
_STATIC_TYPES = MappingProxyType(
    {
        "run.js": "text/javascript; charset=utf-8",
        "page.css": "text/css; charset=utf-8",
        "icon.svg": "image/svg+xml",
    }
)
_LIVE = frozenset({"pending", "running"})
_TITLES = MappingProxyType(
    {
        401: "Sign in needed",
        403: "This link cannot be used",
        404: "Not found",
        409: "Conflict",
    }
)


class Pages:
    """The page routes, with their templates and static files (loaded once, at app creation)."""

    def __init__(self) -> None:
        self._templates = Environment(
            loader=PackageLoader("proxy.web", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
        )
        self._markdown = SafeMarkdown()
        static = resources.files("proxy.web").joinpath("static")
        self._static = {name: static.joinpath(name).read_bytes() for name in _STATIC_TYPES}

    def routes(self) -> list[BaseRoute]:
        """Routes outside the signed mount; :meth:`signed_routes` go inside it. Pages are for
        browsers, not part of the API description (``include_in_schema=False``)."""
        return [
            Route("/static/{name}", self.static, methods=["GET"], include_in_schema=False),
            Route("/login", self.login_form, methods=["GET"], include_in_schema=False),
            Route("/login", self.login, methods=["POST"], include_in_schema=False),
            Route("/logout", self.logout, methods=["POST"], include_in_schema=False),
            Route("/runs/{collection}", self.run_list, methods=["GET"], include_in_schema=False),
            Route(
                "/runs/{collection}/{task}", self.run_list, methods=["GET"], include_in_schema=False
            ),
            Route(
                "/runs/{collection}/{task}/{trajectory_id}",
                self.run_page,
                methods=["GET"],
                include_in_schema=False,
            ),
            Route(
                "/runs/{collection}/{task}/{trajectory_id}/cancel",
                self.cancel,
                methods=["POST"],
                include_in_schema=False,
            ),
            # Where "Jetty run [id]" lines of older answers point.
            Route(
                "/api/v1/trajectory/{collection}/{task}/{trajectory_id}",
                self.old_run_link,
                methods=["GET"],
                include_in_schema=False,
            ),
        ]

    def signed_routes(self) -> list[BaseRoute]:
        return [
            Route(
                "/runs/{collection}/{task}/{trajectory_id}",
                self.run_page,
                methods=["GET"],
                include_in_schema=False,
            )
        ]

    async def static(self, request: Request) -> Response:
        name = str(request.path_params["name"])
        body = self._static.get(name)
        if body is None:
            return self.error(request, NotFound(f"No static file '{name}'."))
        return Response(
            body,
            media_type=_STATIC_TYPES[name],
            headers={"x-content-type-options": "nosniff", "cache-control": "public, max-age=300"},
        )

    async def run_page(self, request: Request) -> Response:
        services = services_of(request)
        try:
            trajectory, links, principal = await self._run(request, services)
        except ProxyError as exc:
            return self.error(request, exc)
        live = trajectory.status in _LIVE
        timeline = fold(await services.store.events_after(trajectory.id))
        artifacts = [] if live else await self._artifacts(services, trajectory, links)
        cancel_url = None
        if live and principal is not None:
            cancel_url = f"/runs/{_names(trajectory)}/cancel"
        context = {
            "run": trajectory,
            "live": live,
            "links": links,
            "timeline": timeline,
            "answer_html": self._markdown.render(timeline.answer),
            "artifacts": artifacts,
            "cancel_url": cancel_url,
            "list_url": f"/runs/{quote(trajectory.collection, safe='')}/"
            f"{quote(trajectory.task, safe='')}",
            "environment": [
                (name, value)
                for name, value in trajectory.environment.items()
                if name != "server" and value not in (None, "")
            ],
            "times": _times(trajectory),
            "usage": list((trajectory.usage or {}).items()),
            "cost": f"${trajectory.cost_usd:.4f}" if trajectory.cost_usd is not None else None,
            "session": trajectory.session,
        }
        return self._page("run.html", context)

    async def run_list(self, request: Request) -> Response:
        services = services_of(request)
        try:
            principal = await viewer(request, services)
            collection = path_name(request, "collection")
            task = path_name(request, "task") if "task" in request.path_params else None
            principal.require(collection)
            params = query(request, ListQuery)
        except ProxyError as exc:
            return self.error(request, exc)
        page = await services.store.list_trajectories(
            collection,
            task,
            status=params.status,
            limit=params.limit,
            offset=(params.page - 1) * params.limit,
        )
        rows = []
        for item in page.items:
            times = _times(item)
            rows.append(
                {
                    "id": item.id,
                    "url": services.links.links("", item.collection, item.task, item.id).page(),
                    "status": item.status,
                    "task": item.task,
                    "agent": item.agent,
                    "model": item.model,
                    "created": times["created"],
                    "duration": times["duration"],
                    "cost": f"${item.cost_usd:.4f}" if item.cost_usd is not None else None,
                }
            )

        def page_url(number: int) -> str:
            wanted = {"page": str(number)}
            if params.status:
                wanted["status"] = params.status
            return f"{request.url.path}?{urlencode(wanted)}"

        more = params.page * params.limit < page.total
        context = {
            "collection": collection,
            "task": task,
            "rows": rows,
            "total": page.total,
            "status": params.status,
            "statuses": sorted(TRAJECTORY_STATUSES),
            "previous_page": page_url(params.page - 1) if params.page > 1 else None,
            "next_page": page_url(params.page + 1) if more else None,
            "signed_in": principal.key is not None,
        }
        return self._page("runs.html", context)

    async def old_run_link(self, request: Request) -> Response:
        """The run's page for a browser, its record for an API client (answers written before
        run pages existed link here)."""
        try:
            names = "/".join(
                (
                    quote(path_name(request, "collection"), safe=""),
                    quote(path_name(request, "task"), safe=""),
                    trajectory_id(request),
                )
            )
        except ProxyError as exc:
            return self.error(request, exc)
        target = f"/runs/{names}" if wants_html(request) else f"/api/v1/db/trajectory/{names}"
        return RedirectResponse(target, status_code=307)

    async def login_form(self, request: Request) -> Response:
        target = local_path(request.query_params.get("next"))
        collections: list[str] = []
        try:
            looking = await viewer(request, services_of(request))
            collections = list(looking.key.collections) if looking.key else []
        except Unauthorized:
            pass
        context = {"next": target, "error": None, "collections": collections}
        return self._page("login.html", context)

    async def login(self, request: Request) -> Response:
        services = services_of(request)
        try:
            same_site(request, services)
            async with request.form(max_files=0, max_fields=4) as form:
                key = str(form.get("key") or "").strip()
                target = local_path(str(form.get("next") or ""))
            principal = await services.authenticator.authenticate(
                {**request.headers, "authorization": f"Bearer {key}"}, request.method
            )
        except Unauthorized:
            context = {"next": target, "error": "That key is not valid here.", "collections": []}
            return self._page("login.html", context, status_code=401)
        except ProxyError as exc:
            return self.error(request, exc)
        response = RedirectResponse(target, status_code=303)
        if principal.key is not None:
            response.set_cookie(
                KEY_COOKIE,
                key,
                path="/",
                httponly=True,
                samesite="strict",
                secure=services.origins.of(request).startswith("https:"),
            )
        return response

    async def logout(self, request: Request) -> Response:
        services = services_of(request)
        try:
            same_site(request, services)
        except ProxyError as exc:
            return self.error(request, exc)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(KEY_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    async def cancel(self, request: Request) -> Response:
        """Cancel a live run from its page (JSON in, JSON out: the page's script calls it)."""
        services = services_of(request)
        try:
            same_site(request, services)
            if request.headers.get(CANCEL_HEADER) != "jetty-run-page":
                raise CrossSiteRefused("Cancel from the run's page.")
            collection = path_name(request, "collection")
            task = path_name(request, "task")
            principal = await viewer(request, services)
            principal.require(collection)
            item = trajectory_id(request)
            status = await change_status(services, collection, task, item, "cancelled")
        except ProxyError as exc:
            return error_response(exc)
        return JSONResponse({"trajectory_id": item, "status": status})

    def error(self, request: Request, exc: ProxyError) -> Response:
        """An error as a page for browsers, in OpenAI's JSON shape for everyone else."""
        if not wants_html(request):
            return error_response(exc)
        if isinstance(exc, Unauthorized) and not request.path_params.get("token"):
            target = urlencode({"next": local_path(request.url.path)})
            return RedirectResponse(f"/login?{target}", status_code=303)
        context = {
            "title": _TITLES.get(exc.status_code, "Something went wrong"),
            "message": exc.message,
            "code": exc.code,
            "status": exc.status_code,
            "login": exc.status_code in (401, 403) or isinstance(exc, LinkRejected),
            "next": local_path(request.url.path),
        }
        return self._page("error.html", context, status_code=exc.status_code)

    async def _run(
        self, request: Request, services: Services
    ) -> tuple[Trajectory, RunLinks, Principal | None]:
        """The run the URL names, its links for the page, and the viewer's key (if any)."""
        collection = path_name(request, "collection")
        task = path_name(request, "task")
        item = trajectory_id(request)
        token = request.path_params.get("token")
        principal: Principal | None = None
        if token is not None:
            links = services.links.check(str(token), collection, task, item)
        else:
            principal = await viewer(request, services)
            principal.require(collection)
            links = services.links.links("", collection, task, item)
        return await find_trajectory(services, collection, task, item), links, principal

    async def _artifacts(
        self, services: Services, trajectory: Trajectory, links: RunLinks
    ) -> list[dict[str, Any]]:
        shown = []
        for number, artifact in enumerate(await services.store.list_artifacts(trajectory.id)):
            found = None
            if number < PREVIEW_FILES:
                found = await preview(services.blobs, artifact, self._markdown)
            shown.append(
                {
                    "path": artifact.path,
                    "url": links.artifact(artifact.path),
                    "size": _size(artifact.bytes),
                    "content_type": artifact.content_type.split(";", 1)[0],
                    "preview": found,
                }
            )
        return shown

    def _page(
        self, template: str, context: Mapping[str, Any], *, status_code: int = 200
    ) -> HTMLResponse:
        body = self._templates.get_template(template).render(**context)
        return HTMLResponse(body, status_code=status_code, headers=dict(PAGE_HEADERS))


def _names(trajectory: Trajectory) -> str:
    return "/".join(
        (quote(trajectory.collection, safe=""), quote(trajectory.task, safe=""), trajectory.id)
    )


def _times(trajectory: Trajectory) -> dict[str, str | None]:
    started, ended = trajectory.started_at, trajectory.finished_at
    duration = None
    if started is not None:
        duration = _duration(((ended or datetime.now(UTC)) - started).total_seconds())
    return {
        "created": _when(trajectory.created_at),
        "started": _when(started) if started else None,
        "ended": _when(ended) if ended else None,
        "duration": duration,
    }


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    seconds = max(0, math.floor(seconds))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {seconds} s"
    return f"{seconds} s"


def _size(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"
