"""OpenAI's Files API: ``/v1/files``, shaped so the openai SDKs' ``files.*`` calls work.

Files belong to a collection: the key's default one, or the ``collection`` form field or
query parameter for a key with several. Their ``file-…`` ids are what ``jetty.files``
refers to. Another collection's file is reported missing (404), never forbidden.
"""

from __future__ import annotations

from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.api.context import Services, authenticate, services_of
from proxy.api.downloads import blob_response
from proxy.api.params import parse, query, resolve_collection
from proxy.api.uploads import read_upload, store_upload
from proxy.auth import Principal
from proxy.errors import NotFound
from proxy.store.records import StoredFile

#: The purposes OpenAI accepts on upload that its File object can also report.
Purpose = Literal["assistants", "batch", "fine-tune", "vision", "user_data"]


class CreateFileForm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    purpose: Purpose
    collection: str | None = None


class ListFilesQuery(BaseModel):
    after: str | None = None
    limit: int = Field(default=10_000, ge=1, le=10_000)
    order: Literal["asc", "desc"] = "desc"
    purpose: str | None = None
    collection: str | None = None


async def create_file(request: Request) -> Response:
    principal = await authenticate(request)
    services = services_of(request)
    async with read_upload(request, fields=frozenset({"purpose", "collection"})) as upload:
        form = parse(CreateFileForm, upload.fields, where="form")
        collection = resolve_collection(principal, form.collection)
        stored = await store_upload(services, upload)
    try:
        record, _ = await services.store.add_file(
            collection, None, stored.filename, form.purpose, stored.blob, stored.content_type
        )
    except BaseException:
        with anyio.CancelScope(shield=True):
            await services.blobs.delete(stored.blob.key)
        raise
    return JSONResponse(file_object(record))


async def list_files(request: Request) -> Response:
    principal = await authenticate(request)
    params = query(request, ListFilesQuery)
    collection = resolve_collection(principal, params.collection)
    files = await services_of(request).store.list_files(
        collection,
        purpose=params.purpose,
        after=params.after,
        limit=params.limit + 1,
        order=params.order,
    )
    page = files[: params.limit]
    return JSONResponse(
        {
            "object": "list",
            "data": [file_object(item) for item in page],
            # OpenAI sends null for both on an empty page.
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
            "has_more": len(files) > params.limit,
        }
    )


async def retrieve_file(request: Request) -> Response:
    principal = await authenticate(request)
    record = await _visible_file(services_of(request), principal, request)
    return JSONResponse(file_object(record))


async def file_content(request: Request) -> Response:
    principal = await authenticate(request)
    services = services_of(request)
    record = await _visible_file(services, principal, request)
    return await blob_response(
        services.blobs,
        record.blob_key,
        filename=record.filename,
        content_type=record.content_type,
        size=record.bytes,
        sha256=record.sha256,
    )


async def delete_file(request: Request) -> Response:
    principal = await authenticate(request)
    services = services_of(request)
    record = await _visible_file(services, principal, request)
    deleted = await services.store.delete_file(record.id)
    if deleted is None:
        raise _missing(record.id)
    with anyio.CancelScope(shield=True):
        await services.blobs.delete(deleted.blob_key)
    return JSONResponse({"id": deleted.id, "object": "file", "deleted": True})


def file_object(record: StoredFile) -> dict[str, Any]:
    """OpenAI's ``File`` object."""
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": int(record.created_at.timestamp()),
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
    }


async def _visible_file(services: Services, principal: Principal, request: Request) -> StoredFile:
    file_id = str(request.path_params["file_id"])
    record = await services.store.get_file(file_id)
    if record is None or not principal.can_access(record.collection):
        raise _missing(file_id)
    return record


def _missing(file_id: str) -> NotFound:
    return NotFound(f"No such File object: {file_id}", param="file_id")
