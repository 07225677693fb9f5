#!/usr/bin/env bash
# Start an S3-compatible server (moto's server mode) for the object-store blob tests.
#
# Idempotent: the server is started only when nothing answers on its port; moto comes from the
# project's virtualenv (the dev extras), else it is installed once into a virtualenv of its own
# under $JETTY_CI_STATE. Buckets are the tests' own (each makes a fresh one). Quiet on success
# except for the line to eval:
#
#     eval "$(scripts/ci/s3.sh)"   # export JETTY_PROXY_TEST_S3_ENDPOINT=http://127.0.0.1:5100
#
# On failure it prints the tail of the server's log.
set -euo pipefail

cd "$(dirname "$0")/../.."
STATE="${JETTY_CI_STATE:-/tmp/jetty-ci}"
DIR="$STATE/s3"
PORT="${JETTY_CI_S3_PORT:-5100}"
WAIT_SECONDS="${JETTY_CI_S3_WAIT:-30}"
ENDPOINT="http://127.0.0.1:$PORT"
LOG="$DIR/moto.log"

mkdir -p "$DIR"

fail() {
    echo "s3.sh: $1" >&2
    if [[ -f "$LOG" ]]; then
        echo "--- last lines of $LOG ---" >&2
        tail -n 40 "$LOG" >&2
    fi
    exit 1
}

answers() {
    python3 - "$ENDPOINT" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2)
PY
}

if ! answers; then
    python=.venv/bin/python
    if ! "$python" -c "import moto.server" >/dev/null 2>&1; then
        python="$DIR/venv/bin/python"
        if ! "$python" -c "import moto.server" >/dev/null 2>&1; then
            { python3 -m venv "$DIR/venv" \
                && "$python" -m pip install --quiet "moto[server]>=5.1"; } >"$LOG" 2>&1 \
                || fail "installing moto[server] failed"
        fi
    fi
    setsid "$python" -m moto.server -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 </dev/null &
    echo $! >"$DIR/moto.pid"
    deadline=$((SECONDS + WAIT_SECONDS))
    until answers; do
        ((SECONDS < deadline)) || fail "moto did not answer on $ENDPOINT in ${WAIT_SECONDS}s"
        sleep 0.2
    done
fi

echo "export JETTY_PROXY_TEST_S3_ENDPOINT=$ENDPOINT"
