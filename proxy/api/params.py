"""Parsing request input at the edge: pydantic models in, typed values or a 400 out.

Also the naming rules for collections and tasks, and which collection a request is about.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from proxy.auth import Principal
from proxy.errors import BadRequest, InvalidField, NotFound
from proxy.store.paths import UnsafePath, clean_relative_path

M = TypeVar("M", bound=BaseModel)

#: Collections and tasks name path segments and storage-path prefixes: no slashes, no dots
#: first (so never ``.`` or ``..``), a sane length.
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
_NAME = re.compile(NAME_PATTERN)
TRAJECTORY_ID_PATTERN = r"^[0-9a-f]{8}$"
_TRAJECTORY_ID = re.compile(TRAJECTORY_ID_PATTERN)


def parse(model: type[M], data: Mapping[str, Any], *, where: str = "body") -> M:
    """Validate ``data`` into ``model``; the first error becomes a 400 naming its field."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or where
        raise InvalidField(
            param, f"Invalid value for '{param}' in the {where}: {first['msg']}"
        ) from exc


async def json_body(request: Request, model: type[M]) -> M:
    """The request's JSON object body, validated into ``model``."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise BadRequest("Request body must be a JSON object.", code="invalid_json")
    return parse(model, data)


def query(request: Request, model: type[M]) -> M:
    """The query string, validated into ``model`` (repeated keys: the last one wins)."""
    return parse(model, dict(request.query_params), where="query")


def check_name(value: str, param: str) -> str:
    if not _NAME.match(value):
        raise InvalidField(
            param,
            f"'{param}' must be 1-128 letters, digits, '_', '-' or '.', not starting with '.'.",
        )
    return value


def path_name(request: Request, param: str) -> str:
    """A collection or task from the URL path, checked like any other name."""
    return check_name(str(request.path_params[param]), param)


def trajectory_id(request: Request) -> str:
    value = str(request.path_params["trajectory_id"])
    if not _TRAJECTORY_ID.match(value):
        raise NotFound(f"trajectory '{value}' not found", param="trajectory_id")
    return value


def resolve_collection(principal: Principal, requested: str | None) -> str:
    """The collection a request acts on: the one asked for, else the key's default.

    Raises 404 (never 403) for one the key may not use.
    """
    collection = check_name(requested, "collection") if requested else principal.default_collection
    principal.require(collection)
    return collection


def safe_path(value: str, param: str) -> str:
    """A relative path from a client, normalised, or 400 for anything that could escape."""
    try:
        return clean_relative_path(value, what=param)
    except UnsafePath as exc:
        raise InvalidField(param, f"Invalid '{param}': {exc}.") from exc
