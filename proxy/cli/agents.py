"""``jetty-proxy agents install|list|image``."""

from __future__ import annotations

import argparse
import sys
import time

import anyio

from proxy.agents import AgentAdapter, UnknownAgentError, agent_names, get_adapter
from proxy.agents.forwarder import ensure_forwarder
from proxy.agents.image import DEFAULT_BASE, DEFAULT_REPOSITORY, AgentsImage, build_agents_image
from proxy.agents.install import AgentCache, AgentInstallError
from proxy.cli.common import Subcommands, megabytes
from proxy.environments import EnvironmentFailed
from proxy.environments.engine import ImageEngine
from proxy.jetty.imageref import InvalidImageRef, parse_image_ref
from proxy.sandbox import SandboxError
from proxy.sandbox.dockerapi import resolve_docker_host
from proxy.settings import Settings


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
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
    image = agent_commands.add_parser(
        "image",
        parents=[common],
        help="build the agents image that Kubernetes sandbox Pods copy the CLIs from",
    )
    image.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"agents to put in (default: all of {', '.join(agent_names())})",
    )
    image.add_argument(
        "--tag",
        metavar="REF",
        help="image reference to build, e.g. registry.example/jetty-proxy-agents:v1"
        " (default: REPOSITORY tagged with the pinned versions)",
    )
    image.add_argument(
        "--repository",
        default=DEFAULT_REPOSITORY,
        metavar="REPO",
        help=f"repository of the default tag (default: {DEFAULT_REPOSITORY})",
    )
    image.add_argument(
        "--base",
        default=DEFAULT_BASE,
        metavar="IMAGE",
        help=f"image whose static /bin/busybox goes in (default: {DEFAULT_BASE})",
    )
    image.add_argument(
        "--push", action="store_true", help="push the image (anonymously) after building it"
    )
    image.set_defaults(handler=_agents_image)


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
            # An install of an earlier version may still lack what is made once per install.
            await cache.prepare_compile_cache(adapter)
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
            f"{label}: installed in {elapsed:.1f} s ({megabytes(agent.size_bytes)})",
            file=sys.stderr,
        )
        return True

    async def install_all() -> list[str]:
        failed = [adapter.name for adapter in adapters if not await install(adapter)]
        if any(adapter.relay_transport == "tcp" for adapter in adapters):
            # Agents that only take a URL reach the relay through the loopback forwarder,
            # built here too, so that a cache made on one host serves any proxy (a container
            # of the proxy has no compiler).
            try:
                binary = await ensure_forwarder(cache.root)
            except AgentInstallError as exc:
                print(f"jetty-proxy: {exc}", file=sys.stderr)
                failed.append("forwarder")
            else:
                print(f"forwarder: ready ({binary})", file=sys.stderr)
        return failed

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
        size = "-" if status.size_bytes is None else megabytes(status.size_bytes)
        print(
            f"{status.name:<13}{status.version:<10}{runtime:<14}{installed:<11}{size:<9}"
            f"{status.path}"
        )
    return 0


def _agents_image(args: argparse.Namespace, settings: Settings) -> int:
    try:
        adapters = [get_adapter(name) for name in dict.fromkeys(args.names or agent_names())]
        for reference in (args.tag, args.base, f"{args.repository}:latest"):
            if reference is not None:
                parse_image_ref(reference)
    except (UnknownAgentError, InvalidImageRef) as exc:
        print(f"jetty-proxy: {exc}", file=sys.stderr)
        return 2
    cache = AgentCache.from_settings(settings)

    async def say(line: str) -> None:
        print(line, file=sys.stderr)

    async def build() -> str:
        installed = [await cache.ensure(adapter) for adapter in adapters]
        forwarder = await ensure_forwarder(cache.root)
        image = AgentsImage(installed, forwarder, base=args.base)
        tag = args.tag or image.default_tag(args.repository)
        images = ImageEngine.from_url(resolve_docker_host(settings.docker_host))
        try:
            await say(f"building {tag} from {cache.root} ...")
            await build_agents_image(images, image, tag, say)
            if args.push:
                await say(f"pushing {tag} ...")
                digest = await images.push(tag, say)
                await say(f"pushed {tag}" + (f" ({digest})" if digest else ""))
        finally:
            await images.aclose()
        return tag

    try:
        tag = anyio.run(build)
    except (AgentInstallError, EnvironmentFailed, SandboxError) as exc:
        print(f"jetty-proxy: {exc}", file=sys.stderr)
        return 1
    print(tag)
    return 0
