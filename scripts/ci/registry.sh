#!/usr/bin/env bash
# Start local image registries for the environment tests, without systemd, and fill them.
#
#   127.0.0.1:5000  public (no auth)     acme/env:v1     Debian bookworm minbase + bash, its
#                                                        own layer (so a pull moves real bytes)
#                                        acme/arm64:v1   busybox labelled linux/arm64
#                                        acme/nobash:v1  busybox: no bash
#   127.0.0.1:5001  private (htpasswd)   acme/secret:v1  answers 401 to anonymous pulls
#
# Needs the engine and the test images, so it runs docker-engine.sh and test-image.sh first
# (both idempotent). Idempotent itself: packages are installed only when missing, a registry
# is started only when it does not answer, and an image is pushed only when the registry does
# not have it yet; pushed images are then removed from the engine so that tests start cold.
# State lives under $JETTY_CI_STATE (default /tmp/jetty-ci). Prints only `export NAME=VALUE`
# lines on stdout (the caller evals them); logs go to stderr and $STATE/registry/*.log.
set -euo pipefail

cd "$(dirname "$0")/../.."
STATE="${JETTY_CI_STATE:-/tmp/jetty-ci}"
DIR="$STATE/registry"
LOG="$DIR/setup.log"
PUBLIC="127.0.0.1:5000"
PRIVATE="127.0.0.1:5001"
PRIVATE_USER="jetty"
PRIVATE_PASSWORD="jetty-private-registry"
WAIT_SECONDS="${JETTY_CI_REGISTRY_WAIT:-30}"
TESTENV="127.0.0.1:5000/jetty/testenv:bookworm"
BUSYBOX="jetty-test/busybox:latest"

mkdir -p "$DIR"
: >"$LOG"

fail() {
    echo "registry.sh: $1" >&2
    echo "--- last lines of $LOG ---" >&2
    tail -n 40 "$LOG" >&2
    exit 1
}

bash scripts/ci/docker-engine.sh >>"$LOG" 2>&1 || fail "the Docker engine did not start"
export DOCKER_HOST="${DOCKER_HOST:-unix://$STATE/docker.sock}"
bash scripts/ci/test-image.sh >>"$LOG" 2>&1 || fail "the test images could not be built"

if ! command -v docker-registry >/dev/null 2>&1 || ! command -v htpasswd >/dev/null 2>&1 \
    || ! command -v curl >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update && apt-get install -y --no-install-recommends docker-registry \
        apache2-utils curl; } >>"$LOG" 2>&1 || fail "installing docker-registry failed"
fi

# $1 name, $2 address, $3 extra config (auth). Never the stock config: it enables auth and
# listens on every interface.
write_config() {
    local name="$1" addr="$2" auth="$3"
    mkdir -p "$DIR/$name/storage"
    cat >"$DIR/$name/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $DIR/$name/storage
  delete:
    enabled: true
http:
  addr: $addr
$auth
YAML
}

answers() { curl -s -o /dev/null --max-time 2 "http://$1/v2/"; }

start_registry() {
    local name="$1" addr="$2"
    answers "$addr" && return 0
    setsid docker-registry serve "$DIR/$name/config.yml" >"$DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$DIR/$name.pid"
    local deadline=$((SECONDS + WAIT_SECONDS))
    until answers "$addr"; do
        ((SECONDS < deadline)) || fail "the $name registry did not answer on $addr"
        sleep 0.2
    done
}

write_config public "$PUBLIC" ""
if [[ ! -s "$DIR/htpasswd" ]]; then
    htpasswd -Bbn "$PRIVATE_USER" "$PRIVATE_PASSWORD" >"$DIR/htpasswd" 2>>"$LOG" \
        || fail "htpasswd failed"
fi
write_config private "$PRIVATE" "auth:
  htpasswd:
    realm: jetty-private
    path: $DIR/htpasswd"
start_registry public "$PUBLIC"
start_registry private "$PRIVATE"

# True when the registry already serves $2:$3 (anonymously, or with $4 as user:password).
has_manifest() {
    local host="$1" repo="$2" tag="$3" auth=()
    [[ -n "${4:-}" ]] && auth=(-u "$4")
    curl -fs -o /dev/null --max-time 5 "${auth[@]}" \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "http://$host/v2/$repo/manifests/$tag"
}

push_and_forget() {
    docker push "$1" >>"$LOG" 2>&1 || fail "pushing $1 failed"
    docker rmi "$1" >>"$LOG" 2>&1 || fail "removing $1 after the push failed"
}

rootfs_of() {  # a tarball of image $1's filesystem
    local container
    container="$(docker create "$1" /bin/true)"
    docker export "$container" >"$2" 2>>"$LOG" || fail "exporting $1 failed"
    docker rm "$container" >>"$LOG" 2>&1
}

if ! has_manifest "$PUBLIC" acme/env v1; then
    # Its own layer rather than the test image's: a cold pull then downloads and extracts it.
    rootfs_of "$TESTENV" "$DIR/acme-env.tar"
    mkdir -p "$DIR/acme-env-extra/etc"
    echo "acme env v1" >"$DIR/acme-env-extra/etc/acme-env-release"
    tar -C "$DIR/acme-env-extra" -rf "$DIR/acme-env.tar" ./etc/acme-env-release
    docker import --change 'CMD ["/bin/bash"]' "$DIR/acme-env.tar" "$PUBLIC/acme/env:v1" \
        >>"$LOG" 2>&1 || fail "importing acme/env failed"
    rm -rf "$DIR/acme-env.tar" "$DIR/acme-env-extra"
    push_and_forget "$PUBLIC/acme/env:v1"
fi

if ! has_manifest "$PUBLIC" acme/nobash v1; then
    docker tag "$BUSYBOX" "$PUBLIC/acme/nobash:v1" >>"$LOG" 2>&1 || fail "tagging failed"
    push_and_forget "$PUBLIC/acme/nobash:v1"
fi

if ! has_manifest "$PUBLIC" acme/arm64 v1; then
    # The engine cannot make an image for another platform offline (`docker import --platform`
    # is ignored), so write one through the registry API: acme/nobash's layer with a config
    # that says linux/arm64.
    python3 - "$PUBLIC" >>"$LOG" 2>&1 <<'PY' || fail "writing acme/arm64 failed"
import hashlib, json, sys, urllib.request

base = f"http://{sys.argv[1]}/v2"
manifest_type = "application/vnd.docker.distribution.manifest.v2+json"

def call(method, url, body=None, headers=None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.headers, response.read()

_, raw = call("GET", f"{base}/acme/nobash/manifests/v1", headers={"Accept": manifest_type})
manifest = json.loads(raw)
_, raw = call("GET", f"{base}/acme/nobash/blobs/{manifest['config']['digest']}")
config = json.loads(raw)
config["architecture"] = "arm64"
config["variant"] = "v8"
blob = json.dumps(config).encode()
digest = "sha256:" + hashlib.sha256(blob).hexdigest()
headers, _ = call("POST", f"{base}/acme/arm64/blobs/uploads/")
location = headers["Location"]
location = location if location.startswith("http") else f"http://{sys.argv[1]}{location}"
separator = "&" if "?" in location else "?"
call("PUT", f"{location}{separator}digest={digest}", blob,
     {"Content-Type": "application/octet-stream"})
for layer in manifest["layers"]:
    call("POST", f"{base}/acme/arm64/blobs/uploads/?mount={layer['digest']}&from=acme/nobash")
manifest["config"] = {**manifest["config"], "digest": digest, "size": len(blob)}
call("PUT", f"{base}/acme/arm64/manifests/v1", json.dumps(manifest).encode(),
     {"Content-Type": manifest_type})
PY
fi

if ! has_manifest "$PRIVATE" acme/secret v1 "$PRIVATE_USER:$PRIVATE_PASSWORD"; then
    # A throwaway client config, so the credentials never reach the user's docker config.
    config="$(mktemp -d)"
    docker tag "$BUSYBOX" "$PRIVATE/acme/secret:v1" >>"$LOG" 2>&1 || fail "tagging failed"
    if ! echo "$PRIVATE_PASSWORD" | DOCKER_CONFIG="$config" docker login "$PRIVATE" \
        -u "$PRIVATE_USER" --password-stdin >>"$LOG" 2>&1 \
        || ! DOCKER_CONFIG="$config" docker push "$PRIVATE/acme/secret:v1" >>"$LOG" 2>&1; then
        rm -rf "$config"
        fail "pushing to the private registry failed"
    fi
    rm -rf "$config"
    docker rmi "$PRIVATE/acme/secret:v1" >>"$LOG" 2>&1 || true
fi

echo "export JETTY_PROXY_TEST_REGISTRY=$PUBLIC"
echo "export JETTY_PROXY_TEST_PRIVATE_REGISTRY=$PRIVATE"
