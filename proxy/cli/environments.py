"""``jetty-proxy snapshots list|build`` and ``jetty-proxy images list|prune``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from proxy.cli.common import Subcommands, T, megabytes
from proxy.environments import EnvironmentFailed, Environments, Snapshot
from proxy.environments.cache import CachedImage, cached_images
from proxy.sandbox import SandboxError
from proxy.settings import Settings


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
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
        size = megabytes(int(info.get("Size") or 0)) if info else "-"
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
        print(f"{image.kind:<8}{megabytes(image.size):<10}{used:<22}{' '.join(image.references)}")
    total = megabytes(sum(image.size for image in images))
    limit = megabytes(settings.images_max_bytes)
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
        print(f"removed {' '.join(image.references)} ({megabytes(image.size)})")
    freed = sum(image.size for image in removed)
    print(f"Removed {len(removed)} images, {megabytes(freed)}.", file=sys.stderr)
    return 0
