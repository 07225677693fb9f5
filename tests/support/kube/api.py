"""The stand-in's HTTP API: the Kubernetes endpoints a sandbox backend uses, and no others.

Routes (JSON shapes and status codes of the real API server, ``Status`` bodies for errors)::

    GET    /version, /api, /apis                               discovery
    POST   /api/v1/namespaces/{ns}/pods                        201 | 400 | 403 | 404 | 409 | 422
    GET    /api/v1/namespaces/{ns}/pods[?labelSelector&fieldSelector&watch&resourceVersion]
    GET    /api/v1/namespaces/{ns}/pods/{name}
    DELETE /api/v1/namespaces/{ns}/pods/{name}[?gracePeriodSeconds]  200 with the Pod
    GET    /api/v1/namespaces/{ns}/pods/{name}/log[?container&follow&tailLines&timestamps]
    POST|GET /apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies[/{name}], DELETE
    POST   /apis/authorization.k8s.io/v1/selfsubjectaccessreviews

Every request needs the bearer token (401 otherwise) and passes the RBAC check of `Access`
(403 with the server's message otherwise).
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.kube.kubelet import Kubelet
from tests.support.kube.status import (
    ApiError,
    already_exists,
    bad_request,
    forbidden,
    not_found,
    unauthorized,
)
from tests.support.kube.store import Obj, Store, now, selector
from tests.support.kube.validation import check_object

Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class Access:
    """Who the token is and what it may do: RBAC, as a set of refusals.

    ``denied`` holds ``(verb, resource)`` pairs, ``resource`` with its subresource
    (``"pods/log"``); everything else is allowed in the stand-in's namespaces.
    """

    user: str = "system:serviceaccount:jetty-proxy:jetty-proxy"
    denied: set[tuple[str, str]] = field(default_factory=set)

    def allows(self, verb: str, resource: str) -> bool:
        return (verb, resource) not in self.denied


@dataclass(frozen=True)
class _Kind:
    resource: str
    kind: str
    api_version: str
    group: str


PODS = _Kind("pods", "Pod", "v1", "")
POLICIES = _Kind("networkpolicies", "NetworkPolicy", "networking.k8s.io/v1", "networking.k8s.io")


class KubeApi:
    """The routes over one `Store` and `Kubelet`."""

    def __init__(
        self,
        store: Store,
        kubelet: Kubelet,
        *,
        token: str,
        access: Access,
        namespaces: set[str],
        version: str,
        warnings: list[str],
        received: list[Obj] | None = None,
    ) -> None:
        self.store = store
        self.kubelet = kubelet
        self.token = token
        self.access = access
        self.namespaces = namespaces
        self.version = version
        self.warnings = warnings
        self.received = received if received is not None else []

    def routes(self) -> list[Route]:
        core = "/api/v1/namespaces/{namespace}"
        net = "/apis/networking.k8s.io/v1/namespaces/{namespace}"
        return [
            Route("/version", self._guard(self.get_version)),
            Route("/api", self._guard(self.get_api)),
            Route("/apis", self._guard(self.get_apis)),
            Route(f"{core}/pods", self._guard(self.collection(PODS)), methods=["GET", "POST"]),
            Route(f"{core}/pods/{{name}}", self._guard(self.item(PODS)), methods=["GET", "DELETE"]),
            Route(f"{core}/pods/{{name}}/log", self._guard(self.pod_log)),
            Route(
                f"{net}/networkpolicies",
                self._guard(self.collection(POLICIES)),
                methods=["GET", "POST"],
            ),
            Route(
                f"{net}/networkpolicies/{{name}}",
                self._guard(self.item(POLICIES)),
                methods=["GET", "DELETE"],
            ),
            Route(
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                self._guard(self.access_review),
                methods=["POST"],
            ),
        ]

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            try:
                if request.headers.get("authorization") != f"Bearer {self.token}":
                    raise unauthorized()
                return await handler(request)
            except ApiError as error:
                return error.response()

        return guarded

    def _authorize(self, verb: str, kind: _Kind, namespace: str, sub: str = "") -> None:
        resource = f"{kind.resource}/{sub}" if sub else kind.resource
        if not self.access.allows(verb, resource):
            raise forbidden(self.access.user, verb, resource, kind.group, namespace)
        if namespace not in self.namespaces:
            raise not_found("namespaces", namespace)

    async def get_version(self, request: Request) -> Response:
        minor = self.version.split(".")[1]
        return JSONResponse(
            {
                "major": "1",
                "minor": minor,
                "gitVersion": f"v{self.version}.0",
                "platform": "linux/amd64",
            }
        )

    async def get_api(self, request: Request) -> Response:
        return JSONResponse({"kind": "APIVersions", "versions": ["v1"]})

    async def get_apis(self, request: Request) -> Response:
        groups = [
            {
                "name": name,
                "versions": [{"groupVersion": f"{name}/v1", "version": "v1"}],
                "preferredVersion": {"groupVersion": f"{name}/v1", "version": "v1"},
            }
            for name in ("networking.k8s.io", "authorization.k8s.io")
        ]
        return JSONResponse({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})

    def collection(self, kind: _Kind) -> Handler:
        async def handle(request: Request) -> Response:
            namespace = request.path_params["namespace"]
            if request.method == "POST":
                return await self._create(request, kind, namespace)
            query = request.query_params
            matches = selector(query.get("labelSelector"), query.get("fieldSelector"))
            if query.get("watch") in ("true", "1"):
                self._authorize("watch", kind, namespace)
                return self._watch(kind, namespace, matches, query)
            self._authorize("list", kind, namespace)
            items = self.store.list(kind.resource, namespace, matches)
            return JSONResponse(
                {
                    "kind": f"{kind.kind}List",
                    "apiVersion": kind.api_version,
                    "metadata": {"resourceVersion": str(self.store.version)},
                    "items": [_bare(item) for item in items],
                }
            )

        return handle

    async def _create(self, request: Request, kind: _Kind, namespace: str) -> Response:
        self._authorize("create", kind, namespace)
        try:
            obj = json.loads(await request.body())
        except ValueError as exc:
            raise bad_request(f"the body of the request was in an unknown format: {exc}") from exc
        warnings = check_object(
            obj,
            api_version=kind.api_version,
            kind=kind.kind,
            namespace=namespace,
            version=self.version,
            field_validation=request.query_params.get("fieldValidation", "Warn"),
        )
        name = obj["metadata"]["name"]
        if self.store.get(kind.resource, namespace, name) is not None:
            raise already_exists(kind.resource, name, kind.group)
        if request.query_params.get("dryRun") == "All":
            return JSONResponse(obj, status_code=201)
        self.warnings.extend(warnings)
        self.received.append(copy.deepcopy(obj))
        if kind is PODS:
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        created = self.store.create(kind.resource, namespace, obj)
        if kind is PODS:
            self.kubelet.admit(created)
        headers = {"Warning": ", ".join(f'299 - "{w}"' for w in warnings)} if warnings else None
        return JSONResponse(created, status_code=201, headers=headers)

    def _watch(self, kind: _Kind, namespace: str, matches: Any, query: Any) -> Response:
        since_text = query.get("resourceVersion") or ""
        since = int(since_text) if since_text not in ("", "0") else None
        timeout = float(query.get("timeoutSeconds") or 1800)

        async def events() -> AsyncIterator[bytes]:
            with anyio.move_on_after(timeout):
                async for event_type, obj in self.store.watch(
                    kind.resource, namespace, matches, since
                ):
                    yield json.dumps({"type": event_type, "object": obj}).encode() + b"\n"

        return StreamingResponse(events(), media_type="application/json")

    def item(self, kind: _Kind) -> Handler:
        async def handle(request: Request) -> Response:
            namespace, name = request.path_params["namespace"], request.path_params["name"]
            if request.method == "GET":
                self._authorize("get", kind, namespace)
                found = self.store.get(kind.resource, namespace, name)
                if found is None:
                    raise not_found(kind.resource, name, kind.group)
                return JSONResponse(found)
            self._authorize("delete", kind, namespace)
            found = self.store.get(kind.resource, namespace, name)
            if found is None:
                raise not_found(kind.resource, name, kind.group)
            grace = await _grace_period(request, found)
            if kind is not PODS:
                self.store.delete(kind.resource, namespace, name)
                return JSONResponse(_deleted_status(kind, found))
            found["metadata"]["deletionTimestamp"] = now()
            found["metadata"]["deletionGracePeriodSeconds"] = grace
            marked = self.store.update(kind.resource, found)
            self.kubelet.forget_later(namespace, name, grace)
            return JSONResponse(marked)

        return handle

    async def pod_log(self, request: Request) -> Response:
        namespace, name = request.path_params["namespace"], request.path_params["name"]
        self._authorize("get", PODS, namespace, "log")
        pod = self.store.get("pods", namespace, name)
        if pod is None:
            raise not_found("pods", name)
        query = request.query_params
        container = query.get("container") or _default_container(pod)
        names = [c["name"] for c in pod["spec"].get("initContainers") or []]
        names += [c["name"] for c in pod["spec"]["containers"]]
        if container not in names:
            raise bad_request(f"container {container} is not valid for pod {name}")
        container_id = self.kubelet.container_id(namespace, name, container)
        if container_id is None:
            reason = _waiting_reason(pod, container)
            raise bad_request(
                f'container "{container}" in pod "{name}" is waiting to start: {reason}'
            )
        tail = query.get("tailLines")
        chunks = self.kubelet.logs(
            container_id,
            follow=query.get("follow") in ("true", "1"),
            tail=int(tail) if tail else None,
            timestamps=query.get("timestamps") in ("true", "1"),
        )
        return StreamingResponse(chunks, media_type="text/plain")

    async def access_review(self, request: Request) -> Response:
        review = json.loads(await request.body())
        check_object(
            review,
            api_version="authorization.k8s.io/v1",
            kind="SelfSubjectAccessReview",
            namespace=None,
            version=self.version,
            field_validation="Strict",
        )
        attributes = review["spec"].get("resourceAttributes") or {}
        resource = attributes.get("resource", "")
        if attributes.get("subresource"):
            resource += "/" + attributes["subresource"]
        allowed = self.access.allows(attributes.get("verb", ""), resource) and (
            attributes.get("namespace") in self.namespaces
        )
        review["status"] = {"allowed": allowed}
        if allowed:
            review["status"]["reason"] = "allowed by the stand-in's Role"
        return JSONResponse(review, status_code=201)


def _bare(item: Obj) -> Obj:
    return {key: value for key, value in item.items() if key not in ("kind", "apiVersion")}


def _deleted_status(kind: _Kind, obj: Obj) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {
            "name": obj["metadata"]["name"],
            "group": kind.group,
            "kind": kind.resource,
            "uid": obj["metadata"]["uid"],
        },
    }


async def _grace_period(request: Request, pod: Obj) -> int:
    text = request.query_params.get("gracePeriodSeconds")
    body = await request.body()
    if text is None and body:
        try:
            options = json.loads(body)
        except ValueError as exc:
            raise bad_request("the body of the request was in an unknown format") from exc
        text = options.get("gracePeriodSeconds") if isinstance(options, dict) else None
    if text is None:
        return int(pod.get("spec", {}).get("terminationGracePeriodSeconds", 30))
    try:
        return max(0, int(text))
    except ValueError as exc:
        raise bad_request(f"invalid gracePeriodSeconds: {text!r}") from exc


def _default_container(pod: Obj) -> str:
    containers = pod["spec"]["containers"]
    if len(containers) == 1:
        return str(containers[0]["name"])
    names = " ".join(c["name"] for c in containers)
    raise bad_request(
        f"a container name must be specified for pod {pod['metadata']['name']},"
        f" choose one of: [{names}]"
    )


def _waiting_reason(pod: Obj, container: str) -> str:
    status = pod.get("status") or {}
    entries = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    for entry in entries:
        if entry.get("name") == container:
            return str(entry.get("state", {}).get("waiting", {}).get("reason", "PodInitializing"))
    return "ContainerCreating"


def create_app(api: KubeApi, lifespan: Any) -> Starlette:
    return Starlette(routes=api.routes(), lifespan=lifespan)
