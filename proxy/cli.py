"""The ``jetty-proxy`` command: ``serve``, ``keys``, ``agents``, ``snapshots`` and ``images``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
from pydantic import ValidationError

from proxy import __version__
from proxy.agents import AgentAdapter, UnknownAgentError, agent_names, get_adapter
from proxy.agents.install import AgentCache, AgentInstallError
from proxy.auth import hash_key, mint_key, printable_prefix
from proxy.environments import EnvironmentFailed, Environments, Snapshot
from proxy.environments.cache import CachedImage, cached_images
from proxy.sandbox import SandboxError
from proxy.settings import Settings, load_settings
from proxy.store import Store, StoreError, open_store

T = TypeVar("T")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        settings = load_settings(
            args.config,
            host=getattr(args, "host", None),
            port=getattr(args, "port", None),
            data_dir=args.data_dir,
            insecure_no_auth=getattr(args, "insecure_no_auth", None) or None,
            log_level=getattr(args, "log_level", None),
        )
    except (ValidationError, ValueError) as exc:
        print(f"jetty-proxy: invalid configuration: {exc}", file=sys.stderr)
        return 2
    handler: Callable[[argparse.Namespace, Settings], int] = args.handler
    try:
        return handler(args, settings)
    except StoreError as exc:
        print(f"jetty-proxy: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jetty-proxy",
        description="OpenAI-compatible proxy that relays chat completions and runs coding agents.",
    )
    parser.add_argument("--version", action="version", version=f"jetty-proxy {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="TOML settings file")
    common.add_argument("--data-dir", type=Path, help="where the database and files live")
    commands = parser.add_subparsers(title="commands")

    serve = commands.add_parser("serve", parents=[common], help="run the HTTP server")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a non-loopback bind with no API keys configured (anyone can use it)",
    )
    serve.set_defaults(handler=_serve)

    keys = commands.add_parser("keys", help="manage client API keys")
    key_commands = keys.add_subparsers(title="keys commands", required=True)
    create = key_commands.add_parser("create", parents=[common], help="mint a key (shown once)")
    create.add_argument(
        "--collection",
        action="append",
        default=[],
        help="collection the key may use (repeat for several)",
    )
    create.add_argument("--admin", action="store_true", help="the key may use every collection")
    create.add_argument("--name", help="a label to recognise the key by")
    create.set_defaults(handler=_keys_create)
    listing = key_commands.add_parser("list", parents=[common], help="list keys (never secrets)")
    listing.set_defaults(handler=_keys_list)
    revoke = key_commands.add_parser("revoke", parents=[common], help="revoke by id or prefix")
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=_keys_revoke)

    agents = commands.add_parser("agents", help="manage the pinned agent CLIs")
    agent_commands = agents.add_subparsers(title="agents commands", required=True)
    install = agent_commands.add_parser(
        "install", parents=[common], help="install pinned agent CLIs into the cache"
    )
    install.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"agents to install (default: all of {', '.join(agent_names())})",
    )
    install.set_defaults(handler=_agents_install)
    agent_list = agent_commands.add_parser(
        "list", parents=[common], help="show the pinned agent CLIs and whether they are installed"
    )
    agent_list.set_defaults(handler=_agents_list)

    snapshots = commands.add_parser("snapshots", help="list and build the snapshot images")
    snapshot_commands = snapshots.add_subparsers(title="snapshots commands", required=True)
    snapshot_list = snapshot_commands.add_parser(
        "list", parents=[common], help="show the snapshots and whether each is built"
    )
    snapshot_list.set_defaults(handler=_snapshots_list)
    snapshot_build = snapshot_commands.add_parser(
        "build", parents=[common], help="build snapshots on the engine (missing bases first)"
    )
    snapshot_build.add_argument(
        "names", nargs="*", metavar="NAME", help="snapshots to build (default: all)"
    )
    snapshot_build.add_argument(
        "--build-arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="build argument for the named snapshots, e.g. BASE_IMAGE=… (repeatable)",
    )
    snapshot_build.set_defaults(handler=_snapshots_build)

    images = commands.add_parser("images", help="the cache of pulled images and package builds")
    image_commands = images.add_subparsers(title="images commands", required=True)
    image_list = image_commands.add_parser(
        "list", parents=[common], help="show cached images, least recently used first"
    )
    image_list.set_defaults(handler=_images_list)
    prune = image_commands.add_parser(
        "prune", parents=[common], help="remove the images unused for longest"
    )
    prune.add_argument(
        "--max-bytes",
        type=int,
        metavar="N",
        help="keep at most N bytes of cached images (default: images_max_bytes; 0 removes all)",
    )
    prune.set_defaults(handler=_images_prune)
    return parser


def _with_store(settings: Settings, work: Callable[[Store], Awaitable[T]]) -> T:
    async def run() -> T:
        store = open_store(settings.database)
        try:
            await store.migrate()
            return await work(store)
        finally:
            await store.close()

    return anyio.run(run)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from proxy.app import create_app

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s %(message)s"
    )
    has_keys = _with_store(settings, lambda store: store.has_keys())
    if not has_keys and not settings.is_loopback and not settings.insecure_no_auth:
        print(
            f"jetty-proxy: refusing to serve on {settings.host} with no API keys: anyone who can"
            " reach it could use your upstream credentials.\n"
            "  Create a key first:  jetty-proxy keys create --collection NAME\n"
            "  or bind to loopback: --host 127.0.0.1\n"
            "  or, knowingly:       --insecure-no-auth",
            file=sys.stderr,
        )
        return 2
    auth = "API keys required" if has_keys else "no API keys configured: auth is off"
    print(
        f"jetty-proxy {__version__} on http://{settings.host}:{settings.port}"
        f" (data in {settings.data_dir}; {auth})",
        file=sys.stderr,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        proxy_headers=False,
        server_header=False,
        # uvicorn's default is 5 s, the same as the idle expiry of httpx's pools (so of the
        # OpenAI SDKs): a request sent just as the server closes the idle connection fails
        # with a reset. Outlast clients' pools and load balancers (60 s) instead, so that
        # idle connections are closed by the client side.
        timeout_keep_alive=75,
    )
    return 0


def _keys_create(args: argparse.Namespace, settings: Settings) -> int:
    collections = tuple(dict.fromkeys(args.collection))
    if not collections and not args.admin:
        print("jetty-proxy: give --collection NAME (repeatable) or --admin", file=sys.stderr)
        return 2
    secret = mint_key()
    key = _with_store(
        settings,
        lambda store: store.create_key(
            hash_key(secret), printable_prefix(secret), collections, args.admin, args.name
        ),
    )
    scope = "all collections (admin)" if key.admin else ", ".join(key.collections)
    print(
        f"Created key {key.id} for {scope}. Store it now; it is not shown again:", file=sys.stderr
    )
    print(secret)
    return 0


def _keys_list(args: argparse.Namespace, settings: Settings) -> int:
    keys = _with_store(settings, lambda store: store.list_keys())
    if not keys:
        print("No keys: authentication is off on loopback binds.", file=sys.stderr)
        return 0
    print(f"{'ID':<14}{'PREFIX':<12}{'STATUS':<10}{'CREATED':<22}{'NAME':<16}COLLECTIONS")
    for key in keys:
        status = "revoked" if key.revoked_at else "active"
        scope = "* (admin)" if key.admin else ",".join(key.collections)
        created = key.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{key.id:<14}{key.prefix:<12}{status:<10}{created:<22}{key.name or '':<16}{scope}")
    return 0


def _keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    revoked = _with_store(settings, lambda store: store.revoke_key(args.key_id))
    if not revoked:
        print(f"jetty-proxy: no active key matches '{args.key_id}'", file=sys.stderr)
        return 1
    print(f"Revoked {args.key_id}.", file=sys.stderr)
    return 0


def _agents_install(args: argparse.Namespace, settings: Settings) -> int:
    try:
        adapters = [get_adapter(name) for name in dict.fromkeys(args.names or agent_names())]
    except UnknownAgentError as exc:
        print(f"jetty-proxy: {exc}", file=sys.stderr)
        return 2
    cache = AgentCache.from_settings(settings)

    async def install(adapter: AgentAdapter) -> bool:
        label = f"{adapter.name} {adapter.binary.version}"
        if cache.status(adapter).installed:
            print(f"{label}: already installed", file=sys.stderr)
            return True
        package = f"{adapter.binary.npm_package}@{adapter.binary.version}"
        print(f"{label}: installing {package} ...", file=sys.stderr)
        started = time.monotonic()
        try:
            agent = await cache.ensure(adapter)
        except AgentInstallError as exc:
            print(f"jetty-proxy: {exc}", file=sys.stderr)
            return False
        elapsed = time.monotonic() - started
        print(
            f"{label}: installed in {elapsed:.1f} s ({_megabytes(agent.size_bytes)})",
            file=sys.stderr,
        )
        return True

    async def install_all() -> list[str]:
        return [adapter.name for adapter in adapters if not await install(adapter)]

    failed = anyio.run(install_all)
    if failed:
        print(
            f"jetty-proxy: {len(failed)} of {len(adapters)} agent CLIs failed to install:"
            f" {', '.join(failed)}",
            file=sys.stderr,
        )
        return 1
    print(f"{len(adapters)} agent CLIs ready in {cache.root}", file=sys.stderr)
    return 0


def _agents_list(args: argparse.Namespace, settings: Settings) -> int:
    cache = AgentCache.from_settings(settings)
    print(f"{'NAME':<13}{'VERSION':<10}{'RUNTIME':<14}{'INSTALLED':<11}{'SIZE':<9}PATH")
    for status in cache.list():
        runtime = f"node {status.node_version}" if status.node_version else "-"
        installed = "yes" if status.installed else "no"
        size = "-" if status.size_bytes is None else _megabytes(status.size_bytes)
        print(
            f"{status.name:<13}{status.version:<10}{runtime:<14}{installed:<11}{size:<9}"
            f"{status.path}"
        )
    return 0


def _with_environments(settings: Settings, work: Callable[[Environments], Awaitable[T]]) -> T:
    async def run() -> T:
        environments = Environments.from_settings(settings)
        try:
            return await work(environments)
        finally:
            await environments.aclose()

    return anyio.run(run)


def _snapshots_list(args: argparse.Namespace, settings: Settings) -> int:
    async def rows(environments: Environments) -> list[tuple[Snapshot, dict[str, Any] | None]]:
        return [(s, await environments.snapshot_image(s)) for s in environments.catalog]

    try:
        found = _with_environments(settings, rows)
    except (EnvironmentFailed, ValueError) as exc:
        print(f"jetty-proxy: {exc}", file=sys.stderr)
        return 1
    default = settings.effective_default_snapshot
    print(f"{'NAME':<20}{'BUILT':<7}{'SIZE':<9}{'IMAGE':<36}DESCRIPTION")
    for snapshot, info in found:
        name = snapshot.name + (" *" if snapshot.name == default else "")
        built = "yes" if info else "no"
        size = _megabytes(int(info.get("Size") or 0)) if info else "-"
        print(f"{name:<20}{built:<7}{size:<9}{snapshot.image:<36}{snapshot.description}")
    if default:
        print("* the default for runs that name no environment", file=sys.stderr)
    return 0


def _snapshots_build(args: argparse.Namespace, settings: Settings) -> int:
    build_args: dict[str, str] = {}
    for item in args.build_arg:
        key, equals, value = item.partition("=")
        if not equals or not key:
            print(f"jetty-proxy: --build-arg needs NAME=VALUE, not {item!r}", file=sys.stderr)
            return 2
        build_args[key] = value

    async def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    async def build(environments: Environments) -> list[str]:
        named = set(args.names)
        failed: list[str] = []
        for snapshot in environments.catalog.build_order(list(args.names)):
            explicit = not named or snapshot.name in named
            if not explicit and await environments.snapshot_image(snapshot) is not None:
                continue  # a base that is already built
            print(f"== {snapshot.name} -> {snapshot.image}", file=sys.stderr)
            started = time.monotonic()
            try:
                await environments.build_snapshot(
                    snapshot, progress=say, build_args=build_args if explicit else None
                )
            except EnvironmentFailed as exc:
                print(f"jetty-proxy: {snapshot.name}: {exc}", file=sys.stderr)
                failed.append(snapshot.name)
                break  # later snapshots may be built on this one
            elapsed = time.monotonic() - started
            print(f"{snapshot.name}: built in {elapsed:.1f} s", file=sys.stderr)
        return failed

    try:
        failed = _with_environments(settings, build)
    except (EnvironmentFailed, ValueError) as exc:
        print(f"jetty-proxy: {exc}", file=sys.stderr)
        return 1
    return 1 if failed else 0


def _images_list(args: argparse.Namespace, settings: Settings) -> int:
    async def listing(environments: Environments) -> list[CachedImage]:
        return await cached_images(environments.engine)

    try:
        images = _with_environments(settings, listing)
    except (EnvironmentFailed, SandboxError, ValueError) as exc:
        print(f"jetty-proxy: {exc}", file=sys.stderr)
        return 1
    print(f"{'KIND':<8}{'SIZE':<10}{'LAST USED':<22}REFERENCES")
    for image in images:
        used = image.last_used.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{image.kind:<8}{_megabytes(image.size):<10}{used:<22}{' '.join(image.references)}")
    total = _megabytes(sum(image.size for image in images))
    limit = _megabytes(settings.images_max_bytes)
    print(f"{len(images)} cached images, {total} (limit {limit})", file=sys.stderr)
    return 0


def _images_prune(args: argparse.Namespace, settings: Settings) -> int:
    if args.max_bytes is not None and args.max_bytes < 0:
        print("jetty-proxy: --max-bytes cannot be negative", file=sys.stderr)
        return 2

    async def prune(environments: Environments) -> list[CachedImage]:
        return await environments.prune(args.max_bytes)

    try:
        removed = _with_environments(settings, prune)
    except (EnvironmentFailed, ValueError) as exc:
        print(f"jetty-proxy: {exc}", file=sys.stderr)
        return 1
    for image in removed:
        print(f"removed {' '.join(image.references)} ({_megabytes(image.size)})")
    freed = sum(image.size for image in removed)
    print(f"Removed {len(removed)} images, {_megabytes(freed)}.", file=sys.stderr)
    return 0


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.0f} MB"
