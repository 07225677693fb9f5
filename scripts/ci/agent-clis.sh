#!/usr/bin/env bash
# Install the pinned agent CLIs (Claude Code, Codex, Gemini CLI) into a cache for the tests.
#
# Idempotent: installs node/npm, and gcc/libc6-dev for the sandbox forwarder, only when missing;
# `jetty-proxy agents install` skips CLIs already in the cache, which lives under
# $JETTY_CI_STATE (default /tmp/jetty-ci) so that a later CI run on the same machine reuses it.
# Prints only the `export ...` line on stdout (the caller evals it); quiet on success, the tail
# of the log on failure.
set -euo pipefail

cd "$(dirname "$0")/../.."
STATE="${JETTY_CI_STATE:-/tmp/jetty-ci}"
CACHE="$STATE/agents"
LOG="$STATE/agent-clis.log"

mkdir -p "$STATE"
: >"$LOG"

fail() {
    echo "agent-clis.sh: $1" >&2
    echo "--- last lines of $LOG ---" >&2
    tail -n 40 "$LOG" >&2
    exit 1
}

if ! command -v npm >/dev/null 2>&1; then
    # Any npm will do: the CLIs bring their own native binaries or the pinned Node runtime.
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update && apt-get install -y --no-install-recommends nodejs npm; } >>"$LOG" 2>&1 \
        || fail "installing nodejs and npm failed"
fi

# The sandbox forwarder (proxy/agents/forwarder) is compiled on the host, statically.
if ! command -v gcc >/dev/null 2>&1 || ! gcc -print-file-name=libc.a | grep -q /; then
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev; } >>"$LOG" 2>&1 \
        || fail "installing gcc and libc6-dev failed"
fi

[[ -x .venv/bin/jetty-proxy ]] || fail "no .venv/bin/jetty-proxy; install the project first"
JETTY_PROXY_AGENT_CACHE_DIR="$CACHE" .venv/bin/jetty-proxy agents install >>"$LOG" 2>&1 \
    || fail "installing the agent CLIs into $CACHE failed"

printf 'export JETTY_PROXY_AGENT_CACHE_DIR=%q\n' "$CACHE"
