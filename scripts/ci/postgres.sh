#!/usr/bin/env bash
# Start PostgreSQL for the store's contract tests, without systemd.
#
# Idempotent: installs the server only when pg_ctlcluster is missing, starts the cluster only
# when it does not already accept connections, and creates the role and database only when
# they do not exist. Quiet on success except for the last line, the URL to export:
#
#     export JETTY_PROXY_TEST_DATABASE_URL="$(scripts/ci/postgres.sh)"
#
# On failure it prints the tail of the relevant log.
set -euo pipefail

VERSION="${JETTY_CI_PG_VERSION:-15}"
CLUSTER="${JETTY_CI_PG_CLUSTER:-main}"
PORT="${JETTY_CI_PG_PORT:-5432}"
NAME="jetty_test"
WAIT_SECONDS="${JETTY_CI_PG_WAIT:-30}"
STATE="${JETTY_CI_STATE:-/tmp/jetty-ci}"

mkdir -p "$STATE"

fail() {
    echo "postgres.sh: $1" >&2
    if [[ -n "${2:-}" && -f "$2" ]]; then
        echo "--- last lines of $2 ---" >&2
        tail -n 40 "$2" >&2
    fi
    exit 1
}

as_postgres() {
    # runuser needs no password and no tty; su is the fallback on minimal images.
    if command -v runuser >/dev/null 2>&1; then
        runuser -u postgres -- "$@"
    else
        su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
    fi
}

ready() {
    pg_isready -q -h 127.0.0.1 -p "$PORT" >/dev/null 2>&1
}

if ! command -v pg_ctlcluster >/dev/null 2>&1 || [[ ! -d "/usr/lib/postgresql/$VERSION" ]]; then
    log="$STATE/apt-postgres.log"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update && apt-get install -y --no-install-recommends "postgresql-$VERSION"; } \
        >"$log" 2>&1 || fail "installing postgresql-$VERSION failed" "$log"
fi

if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$VERSION $CLUSTER"; then
    pg_createcluster "$VERSION" "$CLUSTER" --port "$PORT" >"$STATE/pg-create.log" 2>&1 \
        || fail "creating cluster $VERSION/$CLUSTER failed" "$STATE/pg-create.log"
fi

if ! ready; then
    pg_ctlcluster "$VERSION" "$CLUSTER" start >"$STATE/pg-start.log" 2>&1 || true
    deadline=$((SECONDS + WAIT_SECONDS))
    until ready; do
        ((SECONDS < deadline)) || fail "PostgreSQL did not become ready in ${WAIT_SECONDS}s" \
            "/var/log/postgresql/postgresql-$VERSION-$CLUSTER.log"
        sleep 0.2
    done
fi

as_postgres psql -p "$PORT" -v ON_ERROR_STOP=1 -q >/dev/null <<SQL || fail "creating $NAME failed"
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$NAME') THEN
        CREATE ROLE $NAME LOGIN PASSWORD '$NAME';
    END IF;
END
\$\$;
SELECT 'CREATE DATABASE $NAME OWNER $NAME'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$NAME')\gexec
SQL

echo "export JETTY_PROXY_TEST_DATABASE_URL=postgresql://$NAME:$NAME@127.0.0.1:$PORT/$NAME"
