"""``/api/v1/collections/{collection}/limits``: a collection's limits, with the current usage
next to each (and the calling key's own).

Any key of the collection may read them; only an admin key (or the local user, while the
server has no keys) may change them. A ``PATCH`` sets a limit, or with ``null`` removes the
one set at runtime so that the config's holds again; the change holds on this server at once,
on servers sharing its database within ``limits_sync_seconds``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.api.context import authenticate, services_of
from proxy.api.params import json_body, path_name
from proxy.auth import Principal
from proxy.errors import Forbidden
from proxy.quota import Limits, limits_report


async def get_limits(request: Request) -> Response:
    principal, collection = await _collection(request)
    quotas = services_of(request).quotas
    return JSONResponse(await limits_report(quotas, collection, principal.key))


async def patch_limits(request: Request) -> Response:
    principal, collection = await _collection(request)
    if principal.key is not None and not principal.key.admin:
        raise Forbidden("Only an admin key may change a collection's limits.")
    patch = await json_body(request, Limits)
    quotas = services_of(request).quotas
    await quotas.set_limits(
        collection, {name: getattr(patch, name) for name in patch.model_fields_set}
    )
    return JSONResponse(await limits_report(quotas, collection, principal.key))


async def _collection(request: Request) -> tuple[Principal, str]:
    principal = await authenticate(request)
    collection = path_name(request, "collection")
    principal.require(collection)
    return principal, collection
