"""Trajectories over REST, in the shapes Jetty's SDK uses where they are public.

Every route names ``{collection}/{task}``; a trajectory outside them, or in a collection
the key may not use, is reported missing (404).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, RootModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.api.context import Services, authenticate, services_of
from proxy.api.downloads import ZipEntry, blob_response, zip_response
from proxy.api.params import json_body, path_name, query, safe_path, trajectory_id
from proxy.errors import Conflict, NotFound
from proxy.links import RunLinks
from proxy.runs.followup import public_session
from proxy.store.records import Artifact, Label, Trajectory, TrajectoryStatus

#: What a person may set through the API, and from which statuses.
_TRANSITIONS: Mapping[str, tuple[TrajectoryStatus, ...]] = MappingProxyType(
    {
        "cancelled": ("pending", "running"),
        "archived": ("completed", "failed", "cancelled"),
    }
)


class ListQuery(BaseModel):
    limit: int = Field(default=20, ge=1, le=200)
    # Bounded so that the offset fits a database integer; no listing has that many pages.
    page: int = Field(default=1, ge=1, le=1_000_000)
    status: TrajectoryStatus | None = None


class LabelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=128)
    value: str = Field(max_length=4096)
    author: str | None = Field(default=None, max_length=256)


class StatusesBody(RootModel[dict[str, Literal["cancelled", "archived"]]]):
    root: dict[str, Literal["cancelled", "archived"]] = Field(min_length=1, max_length=100)


async def list_trajectories(request: Request) -> Response:
    collection, task = await _scope(request)
    params = query(request, ListQuery)
    page = await services_of(request).store.list_trajectories(
        collection,
        task,
        status=params.status,
        limit=params.limit,
        offset=(params.page - 1) * params.limit,
    )
    return JSONResponse(
        {
            "trajectories": [trajectory_object(request, item) for item in page.items],
            "total": page.total,
            "limit": params.limit,
            "page": params.page,
            "has_more": params.page * params.limit < page.total,
        }
    )


async def get_trajectory(request: Request) -> Response:
    services, trajectory = await load_trajectory(request)
    labels = await services.store.list_labels(trajectory.id)
    artifacts = await services.store.list_artifacts(trajectory.id)
    return JSONResponse(trajectory_object(request, trajectory, labels=labels, artifacts=artifacts))


async def set_label(request: Request) -> Response:
    services, trajectory = await load_trajectory(request)
    body = await json_body(request, LabelBody)
    await services.store.set_label(trajectory.id, body.key, body.value, body.author)
    labels = await services.store.list_labels(trajectory.id)
    return JSONResponse(
        {"trajectory_id": trajectory.id, "labels": [label_object(label) for label in labels]}
    )


async def set_statuses(request: Request) -> Response:
    collection, task = await _scope(request)
    services = services_of(request)
    wanted = (await json_body(request, StatusesBody)).root
    # Check every id before changing any, so a typo changes nothing.
    for item in wanted:
        await find_trajectory(services, collection, task, item)
    result: dict[str, str] = {}
    for item, status in wanted.items():
        result[item] = await change_status(services, collection, task, item, status)
    return JSONResponse({"statuses": result})


async def change_status(
    services: Services,
    collection: str,
    task: str,
    item: str,
    status: Literal["cancelled", "archived"],
) -> str:
    """Set a trajectory's status the way a person may (409 otherwise); a cancelled live run
    is stopped, its results so far kept. Returns the status it now has."""
    finished = datetime.now(UTC) if status == "cancelled" else None
    changed = await services.store.transition(
        item, status, allowed_from=_TRANSITIONS[status], finished_at=finished
    )
    if changed is None:
        current = await find_trajectory(services, collection, task, item)
        if current.status != status:
            raise Conflict(
                f"Trajectory {item} is {current.status}; it cannot become {status}.",
                param="trajectory_id",
            )
        changed = current
    live = services.runs.live(item) if services.runs else None
    if status == "cancelled" and live is not None:
        live.cancel()  # stops the agent; its results so far are still kept
    return changed.status


async def download_artifact(request: Request) -> Response:
    services, trajectory = await load_trajectory(request)
    path = safe_path(str(request.path_params["path"]), "path")
    artifact = await services.store.get_artifact(trajectory.id, path)
    if artifact is None:
        raise NotFound(f"Trajectory {trajectory.id} has no artifact '{path}'.", param="path")
    return await blob_response(
        services.blobs,
        artifact.blob_key,
        filename=path.rsplit("/", 1)[-1],
        content_type=artifact.content_type,
        size=artifact.bytes,
        sha256=artifact.sha256,
    )


async def download_results(request: Request) -> Response:
    services, trajectory = await load_trajectory(request)
    artifacts = await services.store.list_artifacts(trajectory.id)
    entries = [
        ZipEntry(path=item.path, blob_key=item.blob_key, size=item.bytes, modified=item.created_at)
        for item in artifacts
    ]
    return zip_response(services.blobs, entries, filename=f"{trajectory.id}.zip")


def trajectory_object(
    request: Request,
    trajectory: Trajectory,
    *,
    labels: list[Label] | None = None,
    artifacts: list[Artifact] | None = None,
) -> dict[str, Any]:
    """A trajectory record: Jetty's fields first, the proxy's own after them.

    Listings leave out ``labels``, ``artifacts`` and the step details.
    """
    base = _trajectory_url(request, trajectory)
    body: dict[str, Any] = {
        "trajectory_id": trajectory.id,
        "status": trajectory.status,
        "created": trajectory.created_at.isoformat(),
        "updated": trajectory.updated_at.isoformat(),
        "init_params": dict(trajectory.jetty),
        "error": trajectory.error,
        "collection": trajectory.collection,
        "task": trajectory.task,
        "kind": trajectory.kind,
        "model": trajectory.model,
        "agent": trajectory.agent,
        "environment": dict(trajectory.environment),
        "usage": dict(trajectory.usage) if trajectory.usage is not None else None,
        "cost_usd": trajectory.cost_usd,
        "started": trajectory.started_at.isoformat() if trajectory.started_at else None,
        "ended": trajectory.finished_at.isoformat() if trajectory.finished_at else None,
        "event_count": trajectory.last_seq,
        "session": public_session(trajectory.session),
        "events_url": f"{base}/events",
        "download_url": f"{base}/download",
        # Opens in a browser without a key, until it expires.
        "page_url": run_links(request, trajectory).page(),
    }
    if labels is not None:
        body["labels"] = [label_object(label) for label in labels]
    if artifacts is not None:
        body["steps"] = {name: step.to_dict() for name, step in trajectory.steps.items()}
        body["artifacts"] = [
            {
                "path": item.path,
                "bytes": item.bytes,
                "sha256": item.sha256,
                "content_type": item.content_type,
                "url": f"{base}/artifacts/{quote(item.path)}",
            }
            for item in artifacts
        ]
        body["results_files"] = [{"path": item.path} for item in artifacts]
    return body


def label_object(label: Label) -> dict[str, Any]:
    return {
        "key": label.key,
        "value": label.value,
        "author": label.author,
        "created": label.created_at.isoformat(),
    }


async def load_trajectory(request: Request) -> tuple[Services, Trajectory]:
    """The trajectory named by the URL, if the caller may see it; else 404.

    Under a signed link (``/s/{token}/…``, mounted for the GET routes of one run only) the
    signature stands in for the key: 403 when it does not sign this run or has expired.
    """
    services = services_of(request)
    token = request.path_params.get("token")
    if token is None:
        collection, task = await _scope(request)
    else:
        collection, task = path_name(request, "collection"), path_name(request, "task")
        services.links.check(str(token), collection, task, trajectory_id(request))
    return services, await find_trajectory(services, collection, task, trajectory_id(request))


async def _scope(request: Request) -> tuple[str, str]:
    principal = await authenticate(request)
    collection = path_name(request, "collection")
    principal.require(collection)
    return collection, path_name(request, "task")


async def find_trajectory(services: Services, collection: str, task: str, item: str) -> Trajectory:
    """The trajectory ``item`` of ``collection/task``; 404 when it is not there."""
    trajectory = await services.store.get_trajectory(item)
    if trajectory is None or (trajectory.collection, trajectory.task) != (collection, task):
        raise NotFound(
            f"trajectory '{item}' not found in {collection}/{task}", param="trajectory_id"
        )
    return trajectory


def run_links(request: Request, trajectory: Trajectory) -> RunLinks:
    """Signed links to the trajectory, on the origin the client reached this server at."""
    services = services_of(request)
    return services.links.links(
        services.origins.of(request), trajectory.collection, trajectory.task, trajectory.id
    )


def _trajectory_url(request: Request, trajectory: Trajectory) -> str:
    root = services_of(request).origins.of(request)
    names = "/".join(quote(part, safe="") for part in (trajectory.collection, trajectory.task))
    return f"{root}/api/v1/trajectory/{names}/{trajectory.id}"
