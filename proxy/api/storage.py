"""Storage paths, Jetty's way of naming uploads for ``jetty.file_paths``.

A storage path starts with its collection: ``<collection>/<path within it>``. Uploads go to
``<collection>/uploads/<random>/<filename>`` unless the client names a ``path``; naming an
existing path replaces that file. Files uploaded through ``/v1/files`` have storage paths
too (``<collection>/files/<id>/<filename>``).
"""

from __future__ import annotations

import secrets
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.api.context import authenticate, services_of
from proxy.api.downloads import blob_response
from proxy.api.params import check_name, parse, query, resolve_collection, safe_path
from proxy.api.uploads import read_upload, store_upload
from proxy.errors import InvalidField, NotFound
from proxy.store.paths import UnsafePath, clean_prefix
from proxy.store.records import StoredFile


class UploadForm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: str | None = None
    path: str | None = None


class ListQuery(BaseModel):
    prefix: str = ""
    collection: str | None = None
    after: str | None = None
    limit: int = Field(default=1000, ge=1, le=10_000)


async def upload(request: Request) -> Response:
    principal = await authenticate(request)
    services = services_of(request)
    async with read_upload(request, fields=frozenset({"collection", "path"})) as received:
        form = parse(UploadForm, received.fields, where="form")
        collection = resolve_collection(principal, form.collection)
        if form.path is not None:
            path = safe_path(form.path, "path")
            if path.split("/", 1)[0] == "files":
                raise InvalidField("path", "Paths under 'files/' belong to /v1/files uploads.")
            storage_path = f"{collection}/{path}"
        else:
            storage_path = f"{collection}/uploads/{secrets.token_hex(6)}/{received.filename}"
        stored = await store_upload(services, received)
    try:
        record, replaced = await services.store.add_file(
            collection,
            storage_path,
            stored.filename,
            "user_data",
            stored.blob,
            stored.content_type,
        )
    except BaseException:
        with anyio.CancelScope(shield=True):
            await services.blobs.delete(stored.blob.key)
        raise
    if replaced is not None:
        with anyio.CancelScope(shield=True):
            await services.blobs.delete(replaced)
    return JSONResponse(path_object(record), status_code=201)


async def download(request: Request) -> Response:
    principal = await authenticate(request)
    services = services_of(request)
    storage_path = safe_path(str(request.path_params["storage_path"]), "storage_path")
    collection, _, rest = storage_path.partition("/")
    if not principal.can_access(collection) or not rest:
        raise _missing(storage_path)
    record = await services.store.get_file_by_path(storage_path)
    if record is None or record.collection != collection:
        raise _missing(storage_path)
    return await blob_response(
        services.blobs,
        record.blob_key,
        filename=record.filename,
        content_type=record.content_type,
        size=record.bytes,
        sha256=record.sha256,
    )


async def list_files(request: Request) -> Response:
    principal = await authenticate(request)
    params = query(request, ListQuery)
    if params.prefix:
        try:
            prefix = clean_prefix(params.prefix)
        except UnsafePath as exc:
            raise InvalidField("prefix", f"Invalid 'prefix': {exc}.") from exc
        collection = check_name(prefix.split("/", 1)[0], "prefix")
        principal.require(collection)
    else:
        collection = resolve_collection(principal, params.collection)
        prefix = collection + "/"
    files = await services_of(request).store.list_paths(
        collection, prefix, after=params.after, limit=params.limit + 1
    )
    page = files[: params.limit]
    return JSONResponse(
        {
            "prefix": prefix,
            "files": [path_object(item) for item in page],
            "has_more": len(files) > params.limit,
        }
    )


def path_object(record: StoredFile) -> dict[str, Any]:
    return {
        "storage_path": record.storage_path,
        "file_id": record.id,
        "filename": record.filename,
        "bytes": record.bytes,
        "sha256": record.sha256,
        "content_type": record.content_type,
        "created_at": int(record.created_at.timestamp()),
    }


def _missing(storage_path: str) -> NotFound:
    return NotFound(f"No file at '{storage_path}'.", param="storage_path")
