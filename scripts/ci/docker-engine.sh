#!/usr/bin/env bash
# Start a private Docker engine for tests and CI, without systemd.
#
# Idempotent: installs docker.io/containerd only when dockerd is missing, and starts the
# daemon only when its socket does not already answer. Everything the daemon writes lives
# under $JETTY_CI_STATE (default /tmp/jetty-ci). Quiet on success except for the final
# `export DOCKER_HOST=...` hint; on failure it prints the tail of the relevant log.
set -euo pipefail

STATE="${JETTY_CI_STATE:-/tmp/jetty-ci}"
SOCK="$STATE/docker.sock"
LOG="$STATE/dockerd.log"
PIDFILE="$STATE/dockerd.pid"
WAIT_SECONDS="${JETTY_CI_DOCKER_WAIT:-30}"

mkdir -p "$STATE"

fail() {
    echo "docker-engine.sh: $1" >&2
    if [[ -n "${2:-}" && -f "$2" ]]; then
        echo "--- last lines of $2 ---" >&2
        tail -n 40 "$2" >&2
    fi
    exit 1
}

answers() {
    [[ -S "$SOCK" ]] && curl -fsS --max-time 2 --unix-socket "$SOCK" http://localhost/_ping \
        >/dev/null 2>&1
}

install_engine() {
    local log="$STATE/apt.log"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update && apt-get install -y --no-install-recommends docker.io containerd curl; } \
        >"$log" 2>&1 || fail "installing docker.io failed" "$log"
}

start_daemon() {
    local driver="$1"
    # A stale pidfile from an earlier daemon would make dockerd refuse to start.
    if [[ -f "$PIDFILE" ]] && ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        rm -f "$PIDFILE"
    fi
    rm -f "$SOCK"
    setsid dockerd \
        --host "unix://$SOCK" \
        --data-root "$STATE/docker-root" \
        --exec-root "$STATE/docker-exec" \
        --pidfile "$PIDFILE" \
        --storage-driver "$driver" \
        >"$LOG" 2>&1 </dev/null &
    local pid=$!
    local deadline=$((SECONDS + WAIT_SECONDS))
    while ((SECONDS < deadline)); do
        answers && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.2
    done
    kill "$pid" 2>/dev/null || true
    return 1
}

if ! command -v curl >/dev/null 2>&1 || ! command -v dockerd >/dev/null 2>&1; then
    install_engine
fi

if ! answers; then
    if ! start_daemon overlay2; then
        cp "$LOG" "$STATE/dockerd-overlay2.log" 2>/dev/null || true
        start_daemon vfs || fail "dockerd did not answer on $SOCK within ${WAIT_SECONDS}s" "$LOG"
    fi
fi

echo "export DOCKER_HOST=unix://$SOCK"
