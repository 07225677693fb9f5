"""``GET /openapi.json``: an OpenAPI 3.1 description of the proxy's own endpoints.

It is built from what serves requests, so that it cannot drift from them: the app's routes
(paths, methods, path parameters) and the pydantic models the handlers parse their query,
body and form with. What each route means, answers and needs is said once, in
:data:`OPERATIONS`, next to nothing else; a route outside ``/v1/`` without an entry there
is an error (and a test builds the document from the real app).

Routes under ``/v1/`` (chat completions, models, files) are OpenAI's API and described by
OpenAI's own specification; they are left out. Reading the description needs no key: it
says what a client could learn by trying, and nothing about any collection.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from proxy import __version__
from proxy.api import (
    collections,
    files,
    health,
    limits,
    params,
    snapshots,
    storage,
    trajectories,
    trajectory_events,
)
from proxy.quota import Limits

OPENAPI_VERSION = "3.1.0"
_REF = "#/components/schemas/{model}"
_ERROR_REF = {"$ref": "#/components/responses/Error"}
_STATUS_TEXT = MappingProxyType(
    {
        400: "The request is malformed; `error.param` names the field.",
        401: "A key is required and was missing or wrong.",
        403: "The key may not do this (e.g. change limits without being an admin key).",
        404: "No such resource, or one the key may not use.",
        409: "The resource is not in a state that allows this.",
        413: "The body is larger than the server's limit.",
        503: "A dependency (the database) is unavailable; retry later.",
    }
)
_COMMON_ERRORS = (400, 401, 404)
_BODY_SCHEMAS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "application/json": {"type": "object"},
        # One Server-Sent Event, as the OpenAPI 3.2 event stream model describes it.
        "text/event-stream": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "event": {"type": "string"},
                "data": {"type": "string"},
            },
        },
        "text/plain": {"type": "string"},
        "application/zip": {"type": "string", "format": "binary"},
        "application/octet-stream": {"type": "string", "format": "binary"},
    }
)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """OpenAI's error object: the body of every error the proxy answers."""

    error: ErrorDetail


@dataclass(frozen=True)
class Operation:
    """What a route does and answers, beyond what its path and models say.

    ``query``, ``body`` (JSON) and ``form`` (multipart, with a ``file`` part) are the models
    the handler validates with. ``media_type`` is the success response's; ``public`` routes
    need no key. ``parameters`` are extra OpenAPI parameters the handler reads by hand.
    """

    summary: str
    status: int = 200
    media_type: str = "application/json"
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    form: type[BaseModel] | None = None
    errors: tuple[int, ...] = _COMMON_ERRORS
    public: bool = False
    parameters: tuple[Mapping[str, Any], ...] = field(default=())


async def openapi_json(request: Request) -> Response:
    """The description of the app serving ``request``; needs no key."""
    return JSONResponse(openapi_document(request.app.routes))


OPERATIONS: Mapping[Callable[..., Any], Operation] = MappingProxyType(
    {
        openapi_json: Operation("This description (OpenAPI 3.1).", public=True, errors=()),
        health.healthz: Operation("Liveness: the process answers.", public=True, errors=()),
        health.readyz: Operation("Readiness: the database answers.", public=True, errors=(503,)),
        health.metrics: Operation(
            "Prometheus metrics.", media_type="text/plain", public=True, errors=()
        ),
        files.create_file: Operation(
            "Upload a file (OpenAI's File object; its id is for `jetty.files`).",
            form=files.CreateFileForm,
            errors=(*_COMMON_ERRORS, 413),
        ),
        storage.upload: Operation(
            "Upload a file to a storage path (for `jetty.file_paths`).",
            status=201,
            form=storage.UploadForm,
            errors=(*_COMMON_ERRORS, 413),
        ),
        storage.download: Operation(
            "Download the file at a storage path.", media_type="application/octet-stream"
        ),
        storage.list_files: Operation(
            "List storage paths under a prefix.", query=storage.ListQuery
        ),
        snapshots.list_snapshots: Operation(
            "The snapshot catalog, and whether each snapshot's image is built.", errors=(401,)
        ),
        trajectories.list_trajectories: Operation(
            "List a task's trajectories, newest first.", query=trajectories.ListQuery
        ),
        trajectories.get_trajectory: Operation(
            "One trajectory with its labels, steps and artifacts."
        ),
        trajectories.set_statuses: Operation(
            "Cancel or archive trajectories (all or none).",
            body=trajectories.StatusesBody,
            errors=(*_COMMON_ERRORS, 409),
        ),
        trajectories.set_label: Operation(
            "Set a label on a trajectory.", body=trajectories.LabelBody
        ),
        trajectories.download_results: Operation(
            "A zip of the trajectory's artifacts.", media_type="application/zip"
        ),
        trajectories.download_artifact: Operation(
            "Download one artifact.", media_type="application/octet-stream"
        ),
        trajectory_events.stream_events: Operation(
            "The trajectory's event log as Server-Sent Events: replays, follows, then `end`.",
            media_type="text/event-stream",
            parameters=(
                {
                    "name": "after",
                    "in": "query",
                    "required": False,
                    "description": "Replay events after this seq (as `Last-Event-ID`).",
                    "schema": {"type": "string", "pattern": r"^[0-9]{1,18}$"},
                },
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "pattern": r"^[0-9]{1,18}$"},
                },
            ),
        ),
        collections.get_environment: Operation(
            "A collection's variables, and the names of its secrets."
        ),
        collections.patch_environment: Operation(
            "Set (string) or delete (null) a collection's variables and secrets.",
            body=collections.EnvironmentPatch,
        ),
        limits.get_limits: Operation(
            "A collection's limits, each with its source and current usage (and the calling"
            " key's own)."
        ),
        limits.patch_limits: Operation(
            "Set a collection's limits at runtime (admin keys); null returns one to the config.",
            body=Limits,
            errors=(*_COMMON_ERRORS, 403),
        ),
    }
)

#: Path parameters' rules, as the handlers check them.
_PATH_PARAMETERS = MappingProxyType(
    {
        "collection": {"type": "string", "pattern": params.NAME_PATTERN},
        "task": {"type": "string", "pattern": params.NAME_PATTERN},
        "trajectory_id": {"type": "string", "pattern": params.TRAJECTORY_ID_PATTERN},
    }
)


def openapi_document(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI description of ``routes`` outside ``/v1/`` (but pages: routes with
    ``include_in_schema=False``).

    Raises ``LookupError`` for such a route that :data:`OPERATIONS` does not describe.
    """
    schemas: dict[str, Any] = {}
    _component(ErrorBody, schemas)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if (
            not isinstance(route, Route)
            or not route.include_in_schema
            or route.path.startswith("/v1/")
        ):
            continue
        operation = OPERATIONS.get(route.endpoint)
        if operation is None:
            raise LookupError(f"{route.path} has no entry in proxy.api.openapi.OPERATIONS")
        # "/a/{name:path}" is "/a/{name}" in OpenAPI.
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        names = list(route.param_convertors)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            paths.setdefault(path, {})[method.lower()] = _operation(
                operation, names, schemas, f"{method.lower()}{_operation_id(path)}"
            )
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "jetty-proxy",
            "version": __version__,
            "description": (
                "The proxy's own endpoints: trajectories, files and uploads, collections, "
                "snapshots, downloads, event streams, health. Chat completions, models and "
                "/v1/files follow OpenAI's API and its published specification."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {
                "Error": {
                    "description": "An OpenAI-shaped error.",
                    "content": {
                        "application/json": {"schema": {"$ref": _REF.format(model="ErrorBody")}}
                    },
                }
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A key from `jetty-proxy keys create` (`jp-…`). Not "
                    "needed while authentication is off (no keys, loopback).",
                }
            },
        },
        "security": [{"bearer": []}],
    }


def _operation(
    operation: Operation, names: list[str], schemas: dict[str, Any], operation_id: str
) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": dict(_PATH_PARAMETERS.get(name, {"type": "string", "minLength": 1})),
        }
        for name in names
    ]
    if operation.query is not None:
        parameters += _query_parameters(operation.query, schemas)
    parameters += [dict(parameter) for parameter in operation.parameters]
    success: dict[str, Any] = {"description": "OK"}
    success["content"] = {operation.media_type: {"schema": _BODY_SCHEMAS[operation.media_type]}}
    responses: dict[str, Any] = {str(operation.status): success}
    for status in operation.errors:
        responses[str(status)] = {**_ERROR_REF, "description": _STATUS_TEXT[status]}
    responses["default"] = _ERROR_REF
    rendered: dict[str, Any] = {
        "operationId": operation_id,
        "summary": operation.summary,
        "parameters": parameters,
        "responses": responses,
    }
    if operation.public:
        rendered["security"] = []
    if operation.body is not None:
        rendered["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _component(operation.body, schemas)}},
        }
    if operation.form is not None:
        form = _schema(operation.form, schemas)
        fields = {name: _not_null(item) for name, item in form.get("properties", {}).items()}
        form["properties"] = {**fields, "file": {"type": "string", "format": "binary"}}
        form["required"] = ["file", *form.get("required", [])]
        rendered["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": form}},
        }
    return rendered


def _query_parameters(model: type[BaseModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    schema = _schema(model, schemas)
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": _not_null(field)}
        for name, field in schema.get("properties", {}).items()
    ]


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query value is a string or absent, never null: drop ``null`` from an ``anyOf``."""
    options = [option for option in schema.get("anyOf", []) if option != {"type": "null"}]
    if len(options) != 1:
        return schema
    rest = {key: value for key, value in schema.items() if key not in ("anyOf", "default")}
    return {**rest, **options[0]}


def _component(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, str]:
    schemas[model.__name__] = _schema(model, schemas)
    return {"$ref": _REF.format(model=model.__name__)}


def _schema(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    """``model``'s JSON Schema; the models it refers to go to ``schemas``."""
    schema = model.model_json_schema(ref_template=_REF)
    schemas.update(schema.pop("$defs", {}))
    return schema


def _operation_id(path: str) -> str:
    words = path.replace("{", "").replace("}", "").replace("-", "_").replace(".", "_")
    return "".join(part[:1].upper() + part[1:] for part in words.split("/"))
