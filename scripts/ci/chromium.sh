#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests (Playwright drives it; Playwright's own
# browser download is never used).
#
# Idempotent: installs only when the binary is missing. Quiet on success except for the last
# line, the path to export:
#
#     eval "$(scripts/ci/chromium.sh)"
#
# On failure it prints the tail of the install log.
set -euo pipefail

STATE="${JETTY_CI_STATE:-/tmp/jetty-ci}"
BROWSER="${JETTY_CI_CHROMIUM:-/usr/bin/chromium}"
LOG="$STATE/apt-chromium.log"

mkdir -p "$STATE"

if [[ ! -x "$BROWSER" ]]; then
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update && apt-get install -y --no-install-recommends chromium; } >"$LOG" 2>&1 || {
        echo "chromium.sh: installing chromium failed" >&2
        echo "--- last lines of $LOG ---" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    }
fi

echo "export JETTY_PROXY_TEST_CHROMIUM=$BROWSER"
