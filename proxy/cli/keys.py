"""``jetty-proxy keys create|list|revoke``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from proxy.auth import hash_key, mint_key, printable_prefix
from proxy.cli.common import Subcommands, with_store
from proxy.quota import LIMIT_NAMES, Limits
from proxy.settings import Settings


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
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
    limits = create.add_argument_group(
        "limits",
        "the key's own limits: they count what this key does, on top of its"
        " collections' limits (a key can be held to less, never given more)",
    )
    limits.add_argument(
        "--rpm", "--requests-per-minute", dest="requests_per_minute", type=int, metavar="N"
    )
    limits.add_argument("--max-concurrent-runs", type=int, metavar="N")
    limits.add_argument("--runs-per-hour", type=int, metavar="N")
    limits.add_argument("--budget-usd", type=float, metavar="USD")
    limits.add_argument("--budget-period", choices=("day", "month"), help="default month")
    create.set_defaults(handler=_keys_create)
    listing = key_commands.add_parser("list", parents=[common], help="list keys (never secrets)")
    listing.set_defaults(handler=_keys_list)
    revoke = key_commands.add_parser("revoke", parents=[common], help="revoke by id or prefix")
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=_keys_revoke)


def _keys_create(args: argparse.Namespace, settings: Settings) -> int:
    collections = tuple(dict.fromkeys(args.collection))
    if not collections and not args.admin:
        print("jetty-proxy: give --collection NAME (repeatable) or --admin", file=sys.stderr)
        return 2
    try:
        limits = Limits(**{name: getattr(args, name) for name in LIMIT_NAMES}).set_fields()
    except ValidationError as exc:
        problem = exc.errors()[0]
        print(f"jetty-proxy: --{problem['loc'][0]}: {problem['msg']}", file=sys.stderr)
        return 2
    secret = mint_key()
    key = with_store(
        settings,
        lambda store: store.create_key(
            hash_key(secret), printable_prefix(secret), collections, args.admin, args.name, limits
        ),
    )
    scope = "all collections (admin)" if key.admin else ", ".join(key.collections)
    held = f", limited to {_limits_text(key.limits)}" if key.limits else ""
    print(
        f"Created key {key.id} for {scope}{held}. Store it now; it is not shown again:",
        file=sys.stderr,
    )
    print(secret)
    return 0


def _keys_list(args: argparse.Namespace, settings: Settings) -> int:
    keys = with_store(settings, lambda store: store.list_keys())
    if not keys:
        print(
            "No keys: a server started without keys on a loopback bind serves one local user"
            " (until a key is created).",
            file=sys.stderr,
        )
        return 0
    print(
        f"{'ID':<14}{'PREFIX':<12}{'STATUS':<10}{'CREATED':<22}{'NAME':<16}{'COLLECTIONS':<20}"
        "LIMITS"
    )
    for key in keys:
        status = "revoked" if key.revoked_at else "active"
        scope = "* (admin)" if key.admin else ",".join(key.collections)
        created = key.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{key.id:<14}{key.prefix:<12}{status:<10}{created:<22}{key.name or '':<16}"
            f"{scope:<20}{_limits_text(key.limits)}".rstrip()
        )
    return 0


def _limits_text(limits: Mapping[str, Any] | None) -> str:
    return ",".join(f"{name}={value}" for name, value in (limits or {}).items())


def _keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    revoked = with_store(settings, lambda store: store.revoke_key(args.key_id))
    if not revoked:
        print(f"jetty-proxy: no active key matches '{args.key_id}'", file=sys.stderr)
        return 1
    print(f"Revoked {args.key_id}.", file=sys.stderr)
    return 0
