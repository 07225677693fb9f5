#!/usr/bin/env bash
# Build the offline test images, without any image registry.
#
#   127.0.0.1:5000/jetty/testenv:bookworm  Debian bookworm minbase + bash + ca-certificates
#   jetty-test/busybox:latest              busybox-static only, for fast tests
#
# Idempotent: an image that already exists is left alone, and the debootstrap rootfs is
# cached as a tarball under $JETTY_CI_STATE (default /tmp/jetty-ci), so a rebuild after a
# fresh engine only re-imports it. The testenv tag is registry-shaped so that code which
# treats image references generically sees a realistic one; no registry has to run for it.
# Uses $DOCKER_HOST, else the socket that docker-engine.sh starts. Quiet on success.
set -euo pipefail

STATE="${JETTY_CI_STATE:-/tmp/jetty-ci}"
export DOCKER_HOST="${DOCKER_HOST:-unix://$STATE/docker.sock}"
MIRROR="${JETTY_CI_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
TESTENV="127.0.0.1:5000/jetty/testenv:bookworm"
BUSYBOX="jetty-test/busybox:latest"
CACHE="$STATE/images"
LOG="$CACHE/build.log"

mkdir -p "$CACHE"
: >"$LOG"

fail() {
    echo "test-image.sh: $1" >&2
    echo "--- last lines of $LOG ---" >&2
    tail -n 40 "$LOG" >&2
    exit 1
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

ensure_package() {
    local cmd="$1" pkg="$2"
    command -v "$cmd" >/dev/null 2>&1 && return 0
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update && apt-get install -y --no-install-recommends "$pkg"; } >>"$LOG" 2>&1 \
        || fail "installing $pkg failed"
}

docker version >>"$LOG" 2>&1 || fail "no Docker engine answers at $DOCKER_HOST"

build_busybox() {
    ensure_package busybox busybox-static
    local root
    root="$(mktemp -d "$CACHE/busybox.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$root'" RETURN
    mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,root,app}
    chmod 1777 "$root/tmp"
    cp "$(command -v busybox)" "$root/bin/busybox"
    # Relative links: `busybox --install` would point them at the host's busybox path.
    local applet
    for applet in $("$root/bin/busybox" --list); do
        [[ "$applet" == busybox ]] || ln -sf busybox "$root/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' \
        >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    tar -C "$root" -c . | docker import --change 'CMD ["/bin/sh"]' - "$BUSYBOX" >>"$LOG" 2>&1 \
        || fail "importing $BUSYBOX failed"
}

build_testenv() {
    local tarball="$CACHE/bookworm-minbase.tar"
    if [[ ! -s "$tarball" ]]; then
        ensure_package debootstrap debootstrap
        local root
        root="$(mktemp -d "$CACHE/bookworm.XXXXXX")"
        # shellcheck disable=SC2064
        trap "rm -rf '$root'" RETURN
        debootstrap --variant=minbase --include=ca-certificates,bash bookworm "$root" "$MIRROR" \
            >>"$LOG" 2>&1 || fail "debootstrap failed"
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        tar --numeric-owner -C "$root" -cf "$tarball.tmp" . >>"$LOG" 2>&1 \
            || fail "packing the rootfs failed"
        mv "$tarball.tmp" "$tarball"
    fi
    docker import --change 'CMD ["/bin/bash"]' "$tarball" "$TESTENV" >>"$LOG" 2>&1 \
        || fail "importing $TESTENV failed"
}

have_image "$BUSYBOX" || build_busybox
have_image "$TESTENV" || build_testenv
