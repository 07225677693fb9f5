#!/usr/bin/env bash
# Install bubblewrap, which isolates the local sandbox backend, and check that it can sandbox.
#
# Idempotent: installs the package only when `bwrap` is missing. The check runs a command in
# new pid, ipc, uts and net namespaces, as the local backend does: as root that always works;
# otherwise it needs unprivileged user namespaces (kernel.unprivileged_userns_clone=1 on
# Debian, user.max_user_namespaces > 0). Prints nothing on success (no export is needed);
# on failure it says why and prints the tail of its log.
set -euo pipefail

STATE="${JETTY_CI_STATE:-/tmp/jetty-ci}"
LOG="$STATE/bubblewrap.log"

mkdir -p "$STATE"
: >"$LOG"

fail() {
    echo "bubblewrap.sh: $1" >&2
    echo "--- last lines of $LOG ---" >&2
    tail -n 40 "$LOG" >&2
    exit 1
}

if ! command -v bwrap >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update && apt-get install -y --no-install-recommends bubblewrap; } >>"$LOG" 2>&1 \
        || fail "installing bubblewrap failed"
fi

bwrap --ro-bind / / --dev /dev --proc /proc --unshare-pid --unshare-ipc --unshare-uts \
    --unshare-net --cap-drop ALL -- true >>"$LOG" 2>&1 \
    || fail "bwrap cannot create namespaces here (run as root, or allow unprivileged user namespaces)"
