#!/usr/bin/env bash
# Build the proxy's own image (deploy/Dockerfile) offline, for tests/deploy.
#
#   jetty-test/python:bookworm   Debian bookworm minbase + Debian's python3 and python3-venv
#   jetty-proxy:ci               deploy/Dockerfile on that base, from wheels built on the host
#
# No image registry is needed: the base comes from debootstrap (its rootfs cached as a
# tarball under $JETTY_CI_STATE, default /tmp/jetty-ci), the dependencies from `pip wheel`
# on the host into dist/wheels/, which the Dockerfile installs with --no-index. The proxy
# image is rebuilt every time (the classic builder's cache makes an unchanged one quick).
# Needs the engine, so it runs docker-engine.sh first (idempotent). Prints only
# `export NAME=VALUE` lines on stdout; logs go to $STATE/proxy-image/build.log.
set -euo pipefail

cd "$(dirname "$0")/../.."
STATE="${JETTY_CI_STATE:-/tmp/jetty-ci}"
DIR="$STATE/proxy-image"
LOG="$DIR/build.log"
MIRROR="${JETTY_CI_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE="jetty-test/python:bookworm"
IMAGE="jetty-proxy:ci"
PYTHON="${JETTY_CI_PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3

mkdir -p "$DIR"
: >"$LOG"

fail() {
    echo "proxy-image.sh: $1" >&2
    echo "--- last lines of $LOG ---" >&2
    tail -n 40 "$LOG" >&2
    exit 1
}

bash scripts/ci/docker-engine.sh >>"$LOG" 2>&1 || fail "the Docker engine did not start"
export DOCKER_HOST="${DOCKER_HOST:-unix://$STATE/docker.sock}"

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    tarball="$DIR/bookworm-python.tar"
    if [[ ! -s "$tarball" ]]; then
        if ! command -v debootstrap >/dev/null 2>&1; then
            { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
                --no-install-recommends debootstrap; } >>"$LOG" 2>&1 \
                || fail "installing debootstrap failed"
        fi
        root="$(mktemp -d "$DIR/rootfs.XXXXXX")"
        # shellcheck disable=SC2064
        trap "rm -rf '$root'" EXIT
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$root" "$MIRROR" >>"$LOG" 2>&1 || fail "debootstrap failed"
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        tar --numeric-owner -C "$root" -cf "$tarball.tmp" . >>"$LOG" 2>&1 \
            || fail "packing the rootfs failed"
        mv "$tarball.tmp" "$tarball"
    fi
    docker import --change 'CMD ["/usr/bin/python3"]' "$tarball" "$BASE" >>"$LOG" 2>&1 \
        || fail "importing $BASE failed"
fi

rm -rf dist/wheels
"$PYTHON" -m pip wheel --quiet --wheel-dir dist/wheels ".[postgres,kubernetes]" >>"$LOG" 2>&1 \
    || fail "building the wheels failed"
DOCKER_BUILDKIT=0 docker build --file deploy/Dockerfile --build-arg "BASE_IMAGE=$BASE" \
    --tag "$IMAGE" . >>"$LOG" 2>&1 || fail "building $IMAGE failed"
# The build stage, and the image the tag pointed at before, are left untagged: remove them.
for stage in build proxy; do
    docker image prune --force --filter "label=jetty-proxy.image=$stage" >>"$LOG" 2>&1 || true
done

echo "export JETTY_PROXY_TEST_PROXY_IMAGE=$IMAGE"
