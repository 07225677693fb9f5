"""Runbook requests: check everything, start the run, stream it back as chat chunks.

Everything that can be refused is refused here, with a 4xx, before any sandbox
exists: the jetty block, the runbook and its template variables and secrets, the
environment, the input files. Only then is a trajectory created and the run
handed to the engine.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.agents import get_adapter
from proxy.agents.forwarder import ensure_forwarder
from proxy.agents.install import AgentInstallError
from proxy.auth import Principal
from proxy.errors import (
    Conflict,
    InvalidField,
    NotFound,
    NotImplementedYet,
    ProxyError,
    error_body,
)
from proxy.events import Usage
from proxy.jetty import (
    JettyBlock,
    RunPlan,
    fetch_runbook_url,
    parse_jetty_block,
    resolve_plan,
    system_text,
)
from proxy.runs.credentials import select_credentials
from proxy.runs.engine import AgentSetup, RunLaunch
from proxy.runs.followup import Continuation, previous_run_id
from proxy.runs.launch import SERVER
from proxy.runs.live import LiveRun
from proxy.runs.render import Aggregator, ChunkRenderer, finish_reason_for, usage_dict
from proxy.runs.runtime import RunService
from proxy.sandbox import FileContent, ImageNotFound, SandboxError
from proxy.store import Store
from proxy.store.blobs import BlobStore, file_source

DEFAULT_TASK = "default"
RUNBOOK_URL_MAX_BYTES = 1024 * 1024


class AgentUnavailable(ProxyError):
    status_code = 503
    error_type = "server_error"
    code = "agent_unavailable"


class EngineUnavailableError(ProxyError):
    status_code = 503
    error_type = "server_error"
    code = "sandbox_unavailable"


async def start_run(
    runs: RunService,
    store: Store,
    blobs: BlobStore,
    principal: Principal,
    model: str,
    messages: list[Any],
    raw_block: object,
    *,
    stream: bool,
    include_usage: bool,
    base_url: str,
) -> Response:
    block = parse_jetty_block(raw_block)
    collection = block.collection or principal.default_collection
    principal.require(collection)
    task = block.task or DEFAULT_TASK
    if block.runbook_url:
        runbook = await fetch_runbook_url(block.runbook_url, runs.http, RUNBOOK_URL_MAX_BYTES)
    else:
        runbook = system_text(messages)
    secrets = await store.secret_values(collection)
    plan = resolve_plan(model, messages, block, runbook, runs.defaults, secrets)
    continuation, plan = await _continuation(store, messages, collection, plan)
    image = await _environment(runs, plan)
    inputs = await _inputs(store, blobs, collection, plan)
    previous_inputs: dict[str, FileContent] = {}
    if continuation is not None:
        previous_inputs = await _previous_inputs(store, blobs, continuation)
    credentials = select_credentials(
        plan.agent, plan.model_provider, runs.settings, collection, secrets
    )
    adapter = get_adapter(plan.agent)

    async def setup() -> AgentSetup:
        installed = await runs.agents.ensure(adapter)
        forwarder_dir = None
        if adapter.relay_transport == "tcp":
            forwarder_dir = (await ensure_forwarder(runs.agents.root)).parent
        return AgentSetup(installed, forwarder_dir)

    ready: AgentSetup | None = None
    if runs.agents.status(adapter).installed:
        try:
            ready = await setup()
        except AgentInstallError as exc:
            raise AgentUnavailable(f"The {plan.agent} CLI could not be installed: {exc}") from exc
    # Else the first run of this agent installs it inside the run, where the stream (and its
    # keepalives) has already started and shows the install as progress.
    trajectory = await store.create_trajectory(
        collection,
        task,
        model=plan.model,
        agent=plan.agent,
        jetty=_recorded_block(block),
        environment={
            "image": image,
            "backend": runs.engine.backend.name,
            SERVER: runs.engine.server_id,
        },
        session=continuation.session() if continuation else None,
    )
    live = runs.engine.start(
        RunLaunch(
            run_id=trajectory.id,
            collection=collection,
            task=task,
            plan=plan,
            adapter=adapter,
            agent=ready,
            setup=setup,
            image=image,
            inputs=inputs,
            base_url=base_url,
            continuation=continuation,
            previous_inputs=previous_inputs,
            trajectory_url=(
                f"{base_url}/api/v1/trajectory/{quote(collection, safe='')}/"
                f"{quote(task, safe='')}/{trajectory.id}"
            ),
            credentials=credentials,
        )
    )
    renderer = ChunkRenderer(
        f"chatcmpl-{uuid.uuid4().hex}", plan.model, int(time.time()), plan.tool_activity
    )
    headers = {"x-jetty-trajectory-id": trajectory.id}
    if stream:
        return RunStreamResponse(
            live, renderer, include_usage, keepalive=runs.keepalive_seconds, headers=headers
        )
    return RunCompletionResponse(live, plan, renderer, headers)


async def _continuation(
    store: Store, messages: list[Any], collection: str, plan: RunPlan
) -> tuple[Continuation | None, RunPlan]:
    """The earlier run this conversation continues (named in its last run reply), if any.

    A run that is still live is a 409: its sandbox and session are in use. One that cannot be
    continued (unknown here, another collection's, another agent's) is a warning, and the
    turn starts a new session.
    """
    run_id = previous_run_id(messages)
    if run_id is None:
        return None, plan
    previous = await store.get_trajectory(run_id)
    if previous is None or previous.collection != collection or previous.kind != "run":
        problem = f"it is not a run of collection '{collection}'"
    elif previous.status in ("pending", "running"):
        raise Conflict(
            f"Run {run_id}, which this conversation continues, is still running. Wait for it"
            " to finish (or cancel it), then send the message again.",
            param="messages",
            code="run_in_progress",
        )
    elif previous.agent != plan.agent:
        problem = f"it ran {previous.agent}, and this turn runs {plan.agent}"
    else:
        return Continuation.of(previous), plan
    warning = (
        f"This conversation names run {run_id}, which cannot be continued ({problem});"
        " starting a new agent session."
    )
    return None, dataclasses.replace(plan, warnings=(*plan.warnings, warning))


async def _previous_inputs(
    store: Store, blobs: BlobStore, continuation: Continuation
) -> dict[str, FileContent]:
    """The input files of the run being continued that still exist, by name under /app/assets."""
    previous = continuation.previous
    recorded: Mapping[str, Any] = previous.jetty
    records = []
    for path in recorded.get("file_paths") or []:
        record = await store.get_file_by_path(str(path))
        if record is not None and record.collection == previous.collection:
            records.append((str(path).rsplit("/", 1)[-1], record))
    for file_id in recorded.get("files") or []:
        record = await store.get_file(str(file_id))
        if record is not None and record.collection == previous.collection:
            records.append((record.filename, record))
    found: dict[str, FileContent] = {}
    for name, record in records:
        found[name] = await file_source(blobs, record.blob_key)
    return found


async def _environment(runs: RunService, plan: RunPlan) -> str:
    """The image the run will use, after refusing what cannot work (4xx/503, nothing started).

    With an image engine, pulls and builds happen later, in the run, where their progress
    reaches the stream; here only the cheap checks run (unknown snapshot, bad package, a
    snapshot that is not built). Without one (the local backend) only a present image works.
    """
    environment = plan.environment
    if runs.environments is not None:
        return await runs.environments.check(environment)
    engine = runs.engine
    if environment.kind in ("snapshot", "build"):
        raise NotImplementedYet(
            f"{'Snapshots' if environment.kind == 'snapshot' else 'Dockerfile builds'} need the"
            " Docker sandbox backend, and this server runs the local one; name an image with"
            " jetty.image.",
            param="jetty.snapshot" if environment.kind == "snapshot" else "jetty.base_image",
        )
    image = environment.reference
    if not image:
        raise InvalidField(
            "jetty.image",
            "No environment: give jetty.image, or configure a default image on the server"
            " (JETTY_PROXY_DEFAULT_IMAGE).",
        )
    try:
        await engine.backend.check_image(image)
    except ImageNotFound as exc:
        raise InvalidField(
            "jetty.image", f"Image '{image}' is not present on the sandbox engine."
        ) from exc
    except SandboxError as exc:
        raise EngineUnavailableError(f"The sandbox engine is unavailable: {exc}") from exc
    return image


async def _inputs(
    store: Store, blobs: BlobStore, collection: str, plan: RunPlan
) -> dict[str, FileContent]:
    """Input files by their name under ``/app/assets``; unknown ones are a 404."""
    inputs: dict[str, FileContent] = {}
    records = []
    for index, path in enumerate(plan.file_paths):
        record = await store.get_file_by_path(path)
        if record is None or record.collection != collection:
            raise NotFound(f"No stored file at '{path}'.", param=f"jetty.file_paths[{index}]")
        records.append((path.rsplit("/", 1)[-1], record))
    for index, file_id in enumerate(plan.files):
        record = await store.get_file(file_id)
        if record is None or record.collection != collection:
            raise NotFound(f"No file with id '{file_id}'.", param=f"jetty.files[{index}]")
        records.append((record.filename, record))
    for name, record in records:
        inputs[name] = await file_source(blobs, record.blob_key)
    return inputs


def _recorded_block(block: JettyBlock) -> dict[str, Any]:
    recorded: dict[str, Any] = block.model_dump(mode="json", exclude_none=True)
    return recorded


def _meta(live: LiveRun) -> dict[str, Any]:
    usage = live.usage
    return {
        **live.meta(),
        "status": live.outcome,
        "artifacts": live.artifacts,
        "usage": usage_dict(usage) if usage else None,
        "cost_usd": usage.cost_usd if usage else None,
    }


class RunStreamResponse(EventSourceResponse):
    """The run as ``chat.completion.chunk`` events; a disconnect cancels the run unless detached."""

    def __init__(
        self,
        live: LiveRun,
        renderer: ChunkRenderer,
        include_usage: bool,
        *,
        keepalive: float,
        headers: dict[str, str],
    ) -> None:
        self._live = live
        super().__init__(
            _chunks(live, renderer, include_usage),
            headers=headers,
            ping=int(keepalive) or 1,
            sep="\n",
            ping_message_factory=lambda: ServerSentEvent(comment="ping"),
            send_timeout=60,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self._live.done and not self._live.detached:
                self._live.cancel()


async def _chunks(
    live: LiveRun, renderer: ChunkRenderer, include_usage: bool
) -> AsyncIterator[ServerSentEvent]:
    first = renderer.role_chunk()
    yield _event({**first, "jetty": live.meta()})
    async for event in live.follow():
        for chunk in renderer.render(event):
            yield _event(chunk)
    meta = _meta(live)
    if live.outcome == "completed":
        yield _event(renderer.final_chunk(finish_reason_for(live.finished), meta))
        if include_usage:
            yield _event(renderer.usage_chunk(live.usage or Usage(0, 0)))
    else:
        # No fake finish_reason for a failed run: metadata, then the error in-band.
        closing = renderer.usage_chunk(live.usage or Usage(0, 0))
        yield _event({**closing, "usage": None, "jetty": meta})
        message = live.error or "The run failed."
        yield _event(error_body(message, "agent_error", code=live.error_code))
    yield ServerSentEvent(data="[DONE]")


def _event(data: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(data, separators=(",", ":")))


class RunCompletionResponse(Response):
    """The whole run folded into one ``chat.completion`` (or an error when it failed)."""

    def __init__(
        self, live: LiveRun, plan: RunPlan, renderer: ChunkRenderer, headers: dict[str, str]
    ):
        self._live = live
        self._aggregator = Aggregator(
            renderer.completion_id, renderer.model, renderer.created, plan.tool_activity
        )
        self._extra_headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        live = self._live

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not live.detached:
                live.cancel()
            tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_disconnect)
            async for event in live.follow():
                self._aggregator.add(event)
            tg.cancel_scope.cancel()
        if not live.done:
            return  # the client went away
        meta = _meta(live)
        if live.outcome == "completed":
            body: dict[str, Any] = self._aggregator.completion(jetty_meta=meta)
            status = 200
        else:
            body = {
                **error_body(live.error or "The run failed.", "agent_error", code=live.error_code)
            }
            body["jetty"] = meta
            status = 502
        payload = json.dumps(body).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"x-should-retry", b"false"),
        ]
        headers += [(k.encode(), v.encode()) for k, v in self._extra_headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
