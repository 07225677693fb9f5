"""``/api/v1/collections/{collection}/environment``: a collection's variables and secrets.

Variables are readable. Secrets are write-only: a ``PATCH`` sets (string) or deletes
(``null``) them, and every response lists their names only.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.api.context import authenticate, services_of
from proxy.api.params import json_body, path_name
from proxy.store.records import CollectionEnvironment

EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
EnvValue = Annotated[str, StringConstraints(max_length=64 * 1024)]


class EnvironmentPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variables: dict[EnvName, EnvValue | None] = Field(default_factory=dict, max_length=500)
    secrets: dict[EnvName, EnvValue | None] = Field(default_factory=dict, max_length=500)


async def get_environment(request: Request) -> Response:
    collection = await _collection(request)
    environment = await services_of(request).store.get_environment(collection)
    return JSONResponse(environment_object(environment))


async def patch_environment(request: Request) -> Response:
    collection = await _collection(request)
    patch = await json_body(request, EnvironmentPatch)
    environment = await services_of(request).store.update_environment(
        collection, variables=patch.variables, secrets=patch.secrets
    )
    return JSONResponse(environment_object(environment))


def environment_object(environment: CollectionEnvironment) -> dict[str, Any]:
    return {
        "collection": environment.collection,
        "variables": dict(environment.variables),
        "secrets": list(environment.secret_names),
    }


async def _collection(request: Request) -> str:
    principal = await authenticate(request)
    collection = path_name(request, "collection")
    principal.require(collection)
    return collection
