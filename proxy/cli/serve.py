"""``jetty-proxy serve``."""

from __future__ import annotations

import argparse
import logging
import sys

from proxy import __version__
from proxy.cli.common import Subcommands, with_store
from proxy.settings import Settings


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
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


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from proxy.app import create_app
    from proxy.server import edge_options, server_config

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s %(message)s"
    )
    has_keys = with_store(settings, lambda store: store.has_keys())
    if not has_keys and not settings.local_user_allowed:
        print(
            f"jetty-proxy: refusing to serve on {settings.host} with no API keys: anyone who can"
            " reach it could use your upstream credentials.\n"
            "  Create a key first:  jetty-proxy keys create --collection NAME\n"
            "  or bind to loopback: --host 127.0.0.1\n"
            "  or, knowingly:       --insecure-no-auth",
            file=sys.stderr,
        )
        return 2
    problem = _backend_problem(settings)
    if problem is not None:
        print(f"jetty-proxy: the sandbox backend cannot be used: {problem}", file=sys.stderr)
        return 2
    auth = (
        "API keys required, even if all are revoked later"
        if has_keys
        else "no API keys configured: auth is off until one is created"
    )
    print(
        f"jetty-proxy {__version__} on http://{settings.host}:{settings.port}"
        f" (data in {settings.data_dir}; {auth})",
        file=sys.stderr,
    )
    config = server_config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # A line per request at info and below; above, not even the work of making one.
        access_log=settings.log_level.lower() in ("trace", "debug", "info"),
        **edge_options(settings),
    )
    server = uvicorn.Server(config)
    server.run()
    # uvicorn has logged why it could not start (the port is taken, say).
    return 0 if server.started else 3


def _backend_problem(settings: Settings) -> str | None:
    """What keeps the sandbox backend from working, said before serving starts (the server
    opens it again)."""
    import anyio

    from proxy.runs.runtime import check_backend
    from proxy.sandbox import SandboxError

    try:
        anyio.run(check_backend, settings)
    except SandboxError as exc:
        return str(exc)
    return None
