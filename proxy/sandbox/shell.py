"""The ``/bin/sh`` scripts a Docker container is handed: the run's command with its
environment (`exec_script`), and what a claimed warm container's dispatcher runs
(`claim_script`). Values are quoted for the shell; names it cannot take are refused."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence

from proxy.sandbox.base import SandboxStateError
from proxy.sandbox.warm import Takeover

__all__ = ["claim_script", "exec_script"]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def exec_script(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    before: Sequence[str] = (),
    unset: Sequence[str] = (),
    exec_argv: bool = True,
) -> str:
    """A ``/bin/sh`` script that runs ``before``, unsets ``unset``, exports ``env`` and then
    becomes ``argv`` (unless not ``exec_argv``); `SandboxStateError` for a name the shell
    cannot take."""
    bad = [name for name in env if not _ENV_NAME.fullmatch(name)]
    if bad:
        raise SandboxStateError(f"not a valid environment variable name: {bad[0]!r}")
    return "\n".join(
        [
            *before,
            *(f"unset {name}" for name in unset if _ENV_NAME.fullmatch(name)),
            *(f"export {name}={shlex.quote(value)}" for name, value in env.items()),
            *(["exec " + " ".join(shlex.quote(arg) for arg in argv)] if exec_argv else []),
            "",
        ]
    )


def claim_script(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    standby: bool = False,
    takeover: Takeover | None = None,
) -> str:
    """What a claimed warm container's dispatcher runs: `exec_script` of ``argv`` and
    ``env``; with a ``standby`` (``$JETTY_STANDBY``, its input on fd 3), that is stopped first,
    unless the run takes it over: its ``prepare`` script, its input, the input's end, and the
    standby's exit status as the container's (``argv`` only if the standby exited before)."""
    own = exec_script(argv, env)
    if not standby:
        return own
    own = "exec 3>&-\n" + own
    if takeover is None:
        return 'kill -9 "$JETTY_STANDBY" 2>/dev/null; wait "$JETTY_STANDBY" 2>/dev/null\n' + own
    try:
        stdin = takeover.stdin.decode()
    except UnicodeDecodeError as exc:
        raise SandboxStateError("a standby's input must be text") from exc
    if "\0" in stdin:
        raise SandboxStateError("a standby's input cannot hold NUL")
    return "\n".join(
        [
            'if kill -0 "$JETTY_STANDBY" 2>/dev/null; then',
            f"  ( {takeover.prepare or ':'} ) && printf '%s' {shlex.quote(stdin)} >&3",
            "  exec 3>&-",
            '  wait "$JETTY_STANDBY"',
            "  exit $?",
            "fi",
            own,
        ]
    )
