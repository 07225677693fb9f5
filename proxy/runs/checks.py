"""Everything a run can be refused for, checked before anything of it exists.

`admit` plans the request (the ``jetty`` block, the runbook, the collection's secrets: a
`Draft`), then passes the draft through `CHECKS` in order. A check reads the draft and either
refuses, with a `~proxy.errors.ProxyError` (a 4xx or a 503: no trajectory was created, no
sandbox launched, no agent started), or returns the draft with what it found. Adding a check
is a function and a line in `CHECKS`::

    async def network(draft: Draft, deps: RunDeps) -> Draft:
        deps.defaults.network_policy.check(draft.plan.network_enabled, draft.collection)
        return draft

    async def input_files(draft: Draft, deps: RunDeps) -> Draft:
        files = await files_of(draft.plan.files)
        return dataclasses.replace(draft, inputs={**draft.inputs, **files})
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.agents import AgentAdapter, get_adapter
from proxy.agents.install import AgentInstallError
from proxy.auth import Principal
from proxy.chatui.attachments import AttachmentLimits
from proxy.chatui.retrieval import Source, unwrap_retrieval
from proxy.environments import CheckedEnvironment
from proxy.errors import NotFound
from proxy.jetty import JettyBlock, RunPlan, fetch_runbook_url, resolve_plan, system_text
from proxy.relay.tokens import ProviderCreds
from proxy.runs.agent import AgentSetup, prepare_agent
from proxy.runs.attachments import attached_files
from proxy.runs.credentials import select_credentials
from proxy.runs.deps import RunDeps
from proxy.runs.environment import check_environment
from proxy.runs.errors import AgentUnavailable, RunInProgress
from proxy.runs.followup import Continuation, previous_run_id
from proxy.sandbox import FileContent
from proxy.store import Store
from proxy.store.blobs import BlobStore, file_source
from proxy.store.records import RunGate, StoredFile

__all__ = ["CHECKS", "Check", "Draft", "RunRequest", "admit"]

DEFAULT_TASK = "default"
RUNBOOK_URL_MAX_BYTES = 1024 * 1024


@dataclass(frozen=True)
class RunRequest:
    """A runbook request as the HTTP edge parsed it. ``base_url`` is this server's URL as the
    client reached it (links to result files and to the trajectory start with it)."""

    principal: Principal
    model: str
    messages: Sequence[Any]
    jetty: JettyBlock
    base_url: str


@dataclass(frozen=True)
class Draft:
    """A run being checked: the plan, and what the checks have found so far."""

    request: RunRequest
    collection: str
    task: str
    plan: RunPlan
    adapter: AgentAdapter
    # The collection's secrets in clear (the runbook's own already sit in plan.secret_env).
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    environment: CheckedEnvironment | None = None
    continuation: Continuation | None = None
    # The continued run's input files that still exist, by name under /app/assets.
    previous_inputs: Mapping[str, FileContent] = field(default_factory=dict)
    # The run's input files, by name under /app/assets.
    inputs: Mapping[str, FileContent] = field(default_factory=dict)
    # What Open WebUI retrieved for this turn from the user's documents (see `plan`).
    sources: tuple[Source, ...] = ()
    credentials: ProviderCreds | None = None
    # The agent CLI, when it is installed; else the run installs it, in its stream.
    agent: AgentSetup | None = None
    # The run caps its trajectory's insert must still keep (`limits`).
    gate: RunGate | None = None


#: A check: refuse the draft (raise a ProxyError) or return it with what the check found.
Check = Callable[[Draft, RunDeps], Awaitable[Draft]]


async def admit(request: RunRequest, deps: RunDeps) -> Draft:
    """The request planned and through every check; raises a `ProxyError` for any refusal."""
    draft = await plan(request, deps)
    for check in CHECKS:
        draft = await check(draft, deps)
    return draft


async def plan(request: RunRequest, deps: RunDeps) -> Draft:
    """The run's plan: its collection (which the caller must be allowed), runbook (fetched
    from ``jetty.runbook_url``, or the system message) and settings (`resolve_plan`).

    Open WebUI's retrieval context is taken out of the conversation first: the user's own
    request is the instruction, the system message the runbook, and the retrieved sources
    wait in the draft for the `attachments` check.
    """
    block = request.jetty
    collection = block.collection or request.principal.default_collection
    request.principal.require(collection)
    conversation = unwrap_retrieval(request.messages)
    messages = conversation.messages
    if block.runbook_url:
        runbook = await fetch_runbook_url(block.runbook_url, deps.http, RUNBOOK_URL_MAX_BYTES)
    else:
        runbook = system_text(messages)
    secrets = await deps.store.secret_values(collection)
    planned = resolve_plan(request.model, messages, block, runbook, deps.defaults, secrets)
    return Draft(
        request=request,
        collection=collection,
        task=block.task or DEFAULT_TASK,
        plan=planned,
        adapter=get_adapter(planned.agent),
        secrets=secrets,
        sources=conversation.sources,
    )


async def follow_up(draft: Draft, deps: RunDeps) -> Draft:
    """The earlier run this conversation continues (named in its last run reply), if any.

    A run that is still live is a 409: its sandbox and session are in use. One that cannot be
    continued (unknown here, another collection's, another agent's) is a warning, and the
    turn starts a new session.
    """
    run_id = previous_run_id(draft.request.messages)
    if run_id is None:
        return draft
    previous = await deps.store.get_trajectory(run_id)
    if previous is None or previous.collection != draft.collection or previous.kind != "run":
        problem = f"it is not a run of collection '{draft.collection}'"
    elif previous.status in ("pending", "running"):
        raise RunInProgress(
            f"Run {run_id}, which this conversation continues, is still running. Wait for it"
            " to finish (or cancel it), then send the message again.",
            param="messages",
        )
    elif previous.agent != draft.plan.agent:
        problem = f"it ran {previous.agent}, and this turn runs {draft.plan.agent}"
    else:
        continuation = Continuation.of(previous)
        inputs = await _previous_inputs(deps.store, deps.blobs, continuation)
        return dataclasses.replace(draft, continuation=continuation, previous_inputs=inputs)
    warning = (
        f"This conversation names run {run_id}, which cannot be continued ({problem});"
        " starting a new agent session."
    )
    planned = dataclasses.replace(draft.plan, warnings=(*draft.plan.warnings, warning))
    return dataclasses.replace(draft, plan=planned)


async def environment(draft: Draft, deps: RunDeps) -> Draft:
    """The image the run will use (see `proxy.runs.environment`)."""
    checked = await check_environment(draft.plan.environment, deps.backend, deps.environments)
    return dataclasses.replace(draft, environment=checked)


async def input_files(draft: Draft, deps: RunDeps) -> Draft:
    """The run's input files (``jetty.file_paths``, ``jetty.files``); an unknown one is a 404."""
    records: list[tuple[str, StoredFile]] = []
    for index, path in enumerate(draft.plan.file_paths):
        record = await deps.store.get_file_by_path(path)
        if record is None or record.collection != draft.collection:
            raise NotFound(f"No stored file at '{path}'.", param=f"jetty.file_paths[{index}]")
        records.append((path.rsplit("/", 1)[-1], record))
    for index, file_id in enumerate(draft.plan.files):
        record = await deps.store.get_file(file_id)
        if record is None or record.collection != draft.collection:
            raise NotFound(f"No file with id '{file_id}'.", param=f"jetty.files[{index}]")
        records.append((record.filename, record))
    inputs = dict(draft.inputs)
    for name, record in records:
        inputs[name] = await file_source(deps.blobs, record.blob_key)
    return dataclasses.replace(draft, inputs=inputs)


async def attachments(draft: Draft, deps: RunDeps) -> Draft:
    """Files attached to the user's messages and the sources retrieved for the turn, as input
    files (`proxy.runs.attachments`), named at the end of the instruction. A part that cannot
    become a file is a 400 or 413, an unknown ``file_id`` a 404, each naming the part."""
    settings = deps.settings
    found = await attached_files(
        draft.request.messages,
        draft.sources,
        collection=draft.collection,
        store=deps.store,
        blobs=deps.blobs,
        limits=AttachmentLimits(
            max_files=settings.attachments_max_files,
            max_file_bytes=settings.upload_max_bytes,
            max_total_bytes=settings.upload_max_bytes,
        ),
        taken={*draft.inputs, *draft.previous_inputs},
    )
    if not found.files:
        return draft
    planned = dataclasses.replace(draft.plan, instruction=draft.plan.instruction + found.note)
    return dataclasses.replace(draft, plan=planned, inputs={**draft.inputs, **found.files})


async def credentials(draft: Draft, deps: RunDeps) -> Draft:
    """Where the run's model calls go, and with which key (`proxy.runs.credentials`)."""
    plan = draft.plan
    selected = select_credentials(
        plan.agent, plan.model_provider, deps.settings, draft.collection, draft.secrets
    )
    return dataclasses.replace(draft, credentials=selected)


async def agent(draft: Draft, deps: RunDeps) -> Draft:
    """The agent CLI, when it is installed: one that is and cannot be made ready is a 503.

    An agent's first run installs it inside the run, where the stream (and its keepalives) has
    already started and shows the install as progress. A backend that does not mount this
    machine's files brings the agent itself: nothing is installed here.
    """
    mounts_host = deps.backend.capabilities.mounts_host
    if mounts_host and not deps.agents.status(draft.adapter).installed:
        return draft
    try:
        ready = await prepare_agent(deps.agents, draft.adapter, mounts_host=mounts_host)
    except AgentInstallError as exc:
        raise AgentUnavailable(f"The {draft.plan.agent} CLI could not be installed: {exc}") from exc
    return dataclasses.replace(draft, agent=ready)


async def limits(draft: Draft, deps: RunDeps) -> Draft:
    """429 over the collection's or the key's budget or run caps (`proxy.quota`): first, as
    the cheapest refusal. The caps are checked again in the insert of the run's trajectory,
    which holds them against runs started meanwhile (`Store.create_run`)."""
    gate = await deps.quotas.admit_run(draft.collection, draft.request.principal.key)
    return dataclasses.replace(draft, gate=gate)


async def network(draft: Draft, deps: RunDeps) -> Draft:
    """403 when the run asks for a network its collection may not have (`NetworkPolicy`)."""
    deps.defaults.network_policy.check(draft.plan.network_enabled, draft.collection)
    return draft


#: Every check a run passes, in order, after `plan`.
CHECKS: tuple[Check, ...] = (
    limits,
    network,
    follow_up,
    environment,
    input_files,
    attachments,
    credentials,
    agent,
)


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
