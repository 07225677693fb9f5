"""Everything runbook runs need while the server is up, started and stopped as one unit.

* the model relay, served on a unix socket in a private directory that each sandbox
  mounts read-only (so agents need no network to reach their model), and, with
  ``relay_port``, on a TCP port for sandboxes on a network (Pods), with the backend's own
  routes for them (`~proxy.sandbox.ServesSandboxes`);
* the sandbox backend chosen by the settings;
* the agent CLI cache, and the image engine when the backend builds images;
* the run engine and the task group its runs live in, and the watch that learns through the
  database what other servers decided about this one's runs;
* the warm pools, where the backend can keep sandboxes ready (`proxy.runs.pools`),

handed to the app as one `~proxy.runs.service.Runs`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import anyio
import httpx
import uvicorn
from starlette.routing import BaseRoute

from proxy.agents import get_adapter
from proxy.agents.install import AgentCache, AgentInstallError
from proxy.egress import AddressPolicy, GuardedTransport
from proxy.environments import Environments
from proxy.jetty import PlanDefaults
from proxy.jetty.policy import NetworkPolicy
from proxy.links import LinkSigner
from proxy.prices import PriceBook
from proxy.quota import Quotas
from proxy.relay.app import create_relay_app
from proxy.relay.tokens import RunTokens
from proxy.runs.artifacts import ResultLimits
from proxy.runs.deps import RunDeps
from proxy.runs.engine import RunEngine
from proxy.runs.followup import KeptSandboxes
from proxy.runs.launch import EngineConfig
from proxy.runs.pools import WarmPools, pool_definitions
from proxy.runs.presence import Presence
from proxy.runs.service import Runs
from proxy.runs.watch import RunWatch
from proxy.sandbox import Isolation, SandboxBackend, ServesSandboxes, open_backend
from proxy.sandbox.warm import WarmLauncher
from proxy.server import server_config
from proxy.settings import Settings
from proxy.store import Store, StoreError
from proxy.store.blobs import BlobStore

logger = logging.getLogger("proxy.runs")

RELAY_SOCKET_NAME = "relay.sock"
# The longest a stopping server waits for a compile cache it is making.
_COMPILE_CACHE_SECONDS = 60.0


class _QuietServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the main server owns the signals
        pass


def sandbox_owner(settings: Settings) -> str:
    """Who this installation's sandboxes belong to: processes sharing a database share it."""
    return hashlib.sha256(settings.database.encode()).hexdigest()[:16]


@contextlib.asynccontextmanager
async def serve_relay_socket(
    tokens: RunTokens, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[Path]:
    """Serve the model relay on a fresh unix socket; yields its path.

    The directory lives under the system temp dir because socket paths are limited to
    about 100 bytes; it is removed when the block ends.
    """
    directory = Path(tempfile.mkdtemp(prefix="jetty-relay-"))
    # Sandboxes may run as any user: they need to reach the socket, and only a live run's
    # token makes the relay do anything.
    os.chmod(directory, 0o755)  # noqa: S103
    socket_path = directory / RELAY_SOCKET_NAME
    app = create_relay_app(tokens, settings, transport=transport)
    try:
        async with _serving(server_config(app, uds=str(socket_path), **_RELAY_SERVER)):
            os.chmod(socket_path, 0o666)  # noqa: S103 - see above
            yield socket_path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.asynccontextmanager
async def serve_relay_network(
    tokens: RunTokens,
    settings: Settings,
    routes: Sequence[BaseRoute] = (),
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[None]:
    """Serve the model relay on ``relay_host``:``relay_port`` too, with the sandbox backend's
    own ``routes``, for sandboxes that reach this server over a network (`relay_url`).

    As on the socket, a live run's token is the only credential anything there takes.
    """
    host, port = settings.relay_host, settings.relay_port
    if port is None:
        raise ValueError("relay_port is not set")
    try:
        listener = socket.create_server((host, port))
    except OSError as exc:
        raise RuntimeError(f"the model relay cannot listen on {host}:{port}: {exc}") from exc
    app = create_relay_app(tokens, settings, transport=transport, extra_routes=routes)
    with listener:
        async with _serving(server_config(app, **_RELAY_SERVER), sockets=[listener]):
            logger.info("model relay for networked sandboxes on %s:%s", host, port)
            yield


# Uvicorn's settings for the relay's listeners (the main server logs the requests).
_RELAY_SERVER: dict[str, Any] = {"log_level": "warning", "lifespan": "on", "access_log": False}


@contextlib.asynccontextmanager
async def _serving(
    config: uvicorn.Config, sockets: list[socket.socket] | None = None
) -> AsyncIterator[None]:
    """Run a relay server in the block's task group, once it has started."""
    server = _QuietServer(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(server.serve, sockets=sockets))
        while not server.started:
            if server.should_exit:
                raise RuntimeError("the model relay could not start")
            await anyio.sleep(0.01)
        try:
            yield
        finally:
            server.should_exit = True


async def check_backend(settings: Settings) -> None:
    """Open and close the sandbox backend the settings choose: its opener's `SandboxError`
    says what stops it (no engine, a setting missing, permissions the cluster refuses)."""
    backend = await open_backend(settings, owner=sandbox_owner(settings))
    await backend.aclose()


def plan_defaults(settings: Settings, *, images: bool) -> PlanDefaults:
    """The server's defaults and limits for run plans (``images``: the backend runs images)."""
    return PlanDefaults(
        snapshot=settings.effective_default_snapshot if images else None,
        image=settings.default_image,
        timeout_sec=settings.run_timeout_sec,
        cpus=settings.run_cpus_default,
        memory_bytes=settings.run_memory_default,
        cpus_max=settings.run_cpus_max,
        memory_max_bytes=settings.run_memory_max,
        image_registries=tuple(settings.image_registries),
        network_policy=NetworkPolicy(
            settings.network_policy,
            MappingProxyType(
                {
                    name: policy.network
                    for name, policy in settings.collections.items()
                    if policy.network is not None
                }
            ),
        ),
    )


@contextlib.asynccontextmanager
async def run_service(
    settings: Settings,
    store: Store,
    blobs: BlobStore,
    *,
    links: LinkSigner,
    prices: PriceBook,
    quotas: Quotas,
    backend: SandboxBackend | None = None,
    relay_transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[Runs]:
    """Start the relay, the backend and the engine; stop runs and clean up on exit."""
    tokens = RunTokens()
    the_backend = backend or await open_backend(settings, owner=sandbox_owner(settings))
    capabilities = the_backend.capabilities
    if capabilities.isolation is not Isolation.FULL:
        logger.warning(
            "sandbox backend: %s — runs are not fully isolated from this machine (isolation:"
            " %s; start a Docker engine, or set JETTY_PROXY_BACKEND=docker to insist on one)",
            the_backend.name,
            capabilities.isolation,
        )
    else:
        logger.info("sandbox backend: %s", the_backend.name)
    images = capabilities.builds_images
    defaults = plan_defaults(settings, images=images)
    environments = Environments.from_settings(settings) if images else None
    pools = warm_pools(settings, the_backend)
    kept: KeptSandboxes | None = None
    server_id = secrets.token_hex(8)
    with _presence(settings.data_dir / "servers", server_id) as presence:
        try:
            routes = (
                the_backend.sandbox_routes() if isinstance(the_backend, ServesSandboxes) else ()
            )
            async with (
                serve_relay_socket(tokens, settings, transport=relay_transport) as socket_path,
                serve_relay_network(tokens, settings, routes, transport=relay_transport)
                if settings.relay_port is not None
                else contextlib.nullcontext(),
                httpx.AsyncClient(
                    transport=GuardedTransport(
                        AddressPolicy.from_entries(settings.fetch_allow_hosts)
                    ),
                    timeout=10.0,
                    follow_redirects=True,
                    max_redirects=5,
                    # A proxy from the environment would connect instead, unchecked.
                    trust_env=False,
                ) as http,
                anyio.create_task_group() as tg,
            ):
                deps = RunDeps(
                    store=store,
                    blobs=blobs,
                    tokens=tokens,
                    backend=the_backend,
                    agents=AgentCache.from_settings(settings),
                    config=EngineConfig(
                        relay_socket=socket_path,
                        relay_url=settings.relay_url,
                        results=ResultLimits(
                            settings.results_max_bytes, settings.results_max_files
                        ),
                        owner=sandbox_owner(settings),
                        server_id=server_id,
                        heartbeat_seconds=settings.heartbeat_seconds,
                        server_stale_seconds=settings.server_stale_seconds,
                        sweep_seconds=settings.sweep_seconds,
                        keep_sandbox_seconds=settings.keep_sandbox_seconds,
                        session_max_bytes=settings.session_max_bytes,
                    ),
                    kept=KeptSandboxes(tg, settings.keep_sandbox_seconds),
                    defaults=defaults,
                    settings=settings,
                    http=http,
                    links=links,
                    prices=prices,
                    quotas=quotas,
                    environments=environments,
                    pools=pools,
                )
                kept = deps.kept
                engine = RunEngine(deps, tg, presence=presence)
                await engine.beat()
                removed = await engine.recover()
                if removed:
                    logger.warning("removed %d sandboxes left by an earlier process", len(removed))
                tg.start_soon(engine.keep_beating, name="server-heartbeat")
                watch = RunWatch(store, engine.live, deps.kept, deps.config.watch_seconds)
                tg.start_soon(watch.run, name="run-watch")
                tg.start_soon(_compile_caches, deps.agents, name="agent-compile-caches")
                if pools is not None:
                    assert isinstance(the_backend, WarmLauncher)  # warm_pools made sure
                    tg.start_soon(pools.keep_filled, deps, the_backend, name="warm-pools")
                try:
                    yield Runs(deps, engine)
                finally:
                    # Stopping: cancel the live runs; each cleans up its sandbox, shielded.
                    tg.cancel_scope.cancel()
        finally:
            if pools is not None:
                await pools.close()
            # Sandboxes kept for follow-up turns die with the server (after the runs, which may
            # still hand theirs over while they stop).
            if kept is not None:
                await kept.close_all()
        if environments is not None:
            await environments.aclose()
        await the_backend.aclose()
        # Stopped cleanly, with no sandbox left: nothing for another server to look after.
        with contextlib.suppress(StoreError):
            await store.forget_server(server_id)


async def _compile_caches(agents: AgentCache) -> None:
    """The compile caches of agent CLIs installed by an earlier version (made once).

    Shielded: one cut short by a stop would be made again, from the start, at the next.
    """
    for status in agents.list():
        if not status.installed:
            continue
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_COMPILE_CACHE_SECONDS):
                await agents.prepare_compile_cache(get_adapter(status.name))
        except (AgentInstallError, OSError) as exc:  # its runs compile as they start
            logger.warning("no compile cache for %s: %s", status.name, exc)


def warm_pools(settings: Settings, backend: SandboxBackend) -> WarmPools | None:
    """The warm pools the settings ask for, where the backend can keep them."""
    definitions = pool_definitions(settings)
    if not definitions:
        return None
    if not backend.capabilities.warm_pool or not isinstance(backend, WarmLauncher):
        logger.warning(
            "warm pools (%s) need a sandbox backend that keeps sandboxes ready; the %s one"
            " does not: their runs start cold",
            ", ".join(d.name for d in definitions),
            backend.name,
        )
        return None
    return WarmPools(definitions)


@contextlib.contextmanager
def _presence(directory: Path, server_id: str) -> Iterator[Presence]:
    """This server's lock file (see `proxy.runs.presence`) for the block, if one can be made."""
    presence = Presence(directory, server_id)
    try:
        presence.claim()
    except OSError as exc:  # others here then judge this server by heartbeat alone
        logger.warning("no lock file for this server (%s): others judge it by heartbeat", exc)
    try:
        yield presence
    finally:
        presence.release()
