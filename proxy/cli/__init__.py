"""The ``jetty-proxy`` command: ``serve``, ``keys``, ``agents``, ``snapshots`` and ``images``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from proxy import __version__
from proxy.cli import agents, environments, keys, serve
from proxy.cli.common import Handler
from proxy.settings import load_settings
from proxy.store import StoreError


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
    handler: Handler = args.handler
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
    for module in (serve, keys, agents, environments):
        module.register(commands, common)
    return parser
