"""The Kubernetes objects of one sandbox: its Pod and its NetworkPolicy, as plain JSON.

Pure functions, no client: the Kubernetes backend sends what these return, and the tests
validate it against the published Kubernetes schemas. Written against the ``v1`` Pod and the
``networking.k8s.io/v1`` NetworkPolicy of Kubernetes 1.30 to 1.37.

One Pod per run, created with everything it needs (a Pod cannot be changed or rerun)::

    pod  jetty-<run>-<suffix>     restartPolicy Never, no service account token, deadline
      volumes      jetty-tools (emptyDir)   the agent CLI, forwarder and busybox, copied in
                   app (emptyDir)           /app: assets, results, trajectory.json
                   home (emptyDir)          the agent's HOME
                   jetty-out (emptyDir)     the archive of what leaves the Pod
      init   jetty-tools    agents image: copies the run's agent and /jetty/tools into
                            jetty-tools (only the agent the run needs: they are large),
                            after checking that the image has its pinned version
      init   jetty-inputs   agents image: GET {relay_url}/inputs with the run token, a tar
                            unpacked over / (members under app/ and the HOME only)
      main   agent          the run's image; jetty-tools read-only at /opt/jetty, the same
                            paths as the Docker backend's mounts. busybox sh supervises:
                            runs the agent, long-polls {relay_url}/stop (answered "stop"
                            on cancel or timeout: the agent is killed), then sends tars of
                            /app/results and the HOME, and the agent's stderr, to
                            {relay_url}/outputs?part=results|home|stderr, and exits with
                            the agent's status

So files move over the relay's HTTP port with the run token, never with ``pods/exec``, and
the archives are made by tar, which stores symlinks as symlinks (never follows them), named
like the engine's archive of a directory; the proxy unpacks them with the same checks and caps
as Docker's archives. `SANDBOX_PATHS` names the
three endpoints. ``activeDeadlineSeconds`` backs up the proxy's own timeout.

The NetworkPolicy selects the run's Pod by its run-id label: no ingress at all, egress to DNS
and to the proxy's relay port; a run with ``network_enabled`` may reach any address except
the link-local range (cloud metadata services). The relay is a `Peer`: the proxy's Pods, or
an address block when the proxy runs outside the cluster.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from proxy.sandbox.base import (
    LABEL_MANAGED,
    LABEL_RUN_ID,
    TOOLS_DIR,
    SandboxLimitError,
    SandboxSpec,
)

TOOLS_MOUNT = TOOLS_DIR
# Inside the agents image: busybox, the forwarder, and one directory per agent CLI.
IMAGE_ROOT = "/jetty"
IMAGE_TOOLS = f"{IMAGE_ROOT}/tools"
IMAGE_AGENTS = f"{IMAGE_ROOT}/agents"
IMAGE_BUSYBOX = f"{IMAGE_TOOLS}/busybox"
BUSYBOX = f"{TOOLS_MOUNT}/tools/busybox"
APP_DIR = "/app"
OUT_DIR = "/run/jetty-out"
AGENT_CONTAINER = "agent"
TOOLS_CONTAINER = "jetty-tools"
INPUTS_CONTAINER = "jetty-inputs"
# The agents image runs as this user (nobody) when nothing else is asked for.
NOBODY = 65534
# Seconds between a delete and the kill: the supervisor needs none, the deadline is the proxy's.
GRACE_SECONDS = 2
MANAGED_BY = "jetty-proxy"
ANNOTATION_COLLECTION = "jetty-proxy/collection"

SANDBOX_PATHS = MappingProxyType({"inputs": "/inputs", "stop": "/stop", "outputs": "/outputs"})
ENV_TOKEN = "JETTY_RUN_TOKEN"
ENV_URL = "JETTY_SANDBOX_URL"
ENV_HOST = "JETTY_SANDBOX_HOST"
ENV_PORT = "JETTY_SANDBOX_PORT"
ENV_PATH = "JETTY_SANDBOX_PATH"

# The marker an install leaves in its directory (`proxy.agents.install.MARKER`), which the
# agents image keeps: it names the version, checked before the copy.
AGENT_MARKER = ".jetty-agent.json"
_COPY_TOOLS = (
    'set -eu; b="$1"; agent="$2"; version="$3"; '
    f'"$b" cp -R {IMAGE_TOOLS} {TOOLS_MOUNT}/; '
    f'"$b" mkdir -p {TOOLS_MOUNT}/agents; '
    'if [ -n "$agent" ]; then '
    f'if ! "$b" grep -qF "\\"version\\": \\"$version\\"" {IMAGE_AGENTS}/"$agent"/{AGENT_MARKER}'
    " 2>/dev/null; then "
    'echo "jetty-tools: this agents image has no $agent $version: build one for this proxy'
    ' (jetty-proxy agents image) and set agents_image" >&2; exit 1; fi; '
    f'"$b" cp -R {IMAGE_AGENTS}/"$agent" {TOOLS_MOUNT}/agents/; fi'
)
_FETCH_INPUTS = (
    "set -eu; set -o pipefail; "
    f'"{IMAGE_BUSYBOX}" wget -q -O - --header "Authorization: Bearer ${ENV_TOKEN}"'
    f' "${ENV_URL}{SANDBOX_PATHS["inputs"]}"'
    f' | "{IMAGE_BUSYBOX}" tar -x -C /'
)
# One part of the outputs: run by nc with the connection as its stdin and stdout ($0 busybox,
# $1 the part, $2 its file). It reads the answer itself: busybox nc would half-close the
# connection at the end of a piped body, and servers may drop it before they answer.
_SEND = (
    'b="$0"; '
    "printf 'POST %s%s?part=%s HTTP/1.1\\r\\nHost: %s:%s\\r\\nAuthorization: Bearer %s\\r\\n"
    "Content-Type: application/octet-stream\\r\\nContent-Length: %s\\r\\n"
    "Connection: close\\r\\n\\r\\n' "
    f'"${ENV_PATH}" {SANDBOX_PATHS["outputs"]} "$1" "${ENV_HOST}" "${ENV_PORT}" "${ENV_TOKEN}" '
    '"$("$b" stat -c %s "$2")"; '
    '"$b" cat "$2"; '
    "read -r said; "
    'case "$said" in "HTTP/1."?" 2"*) ;; '
    '*) echo "jetty-sandbox: the proxy did not take the $1: $said" >&2 ;; esac'
)

# $0 is a name, "$@" the agent's command. The Pod's log carries the agent's stdout alone (the
# translator reads it line by line); its stderr goes to a file that leaves with the outputs.
# The stop watcher long-polls the proxy: a body of "stop" kills the agent; anything else (a
# timeout, the proxy restarting) asks again. Each part goes over nc (`_SEND`) rather than
# wget, whose --post-file reads the whole file into memory. The archives are named like the engine's
# archive of a directory (members under its base name), so the proxy reads them alike.
_SUPERVISE = f"""b={BUSYBOX}
"$b" mkdir -p {APP_DIR}/results {APP_DIR}/assets "$HOME"
cd {APP_DIR}
"$@" </dev/null 2>>{OUT_DIR}/stderr &
agent=$!
(
  while :; do
    said=$("$b" wget -q -O - --header "Authorization: Bearer ${ENV_TOKEN}" \\
      "${ENV_URL}{SANDBOX_PATHS["stop"]}" 2>/dev/null)
    if [ "$said" = stop ]; then kill -KILL "$agent"; exit 0; fi
    "$b" sleep 2
  done
) >/dev/null 2>&1 &
watcher=$!
wait "$agent"
code=$?
kill "$watcher" 2>/dev/null
send() {{
  "$b" nc "${ENV_HOST}" "${ENV_PORT}" -e "$b" sh -c {shlex.quote(_SEND)} "$b" "$1" "$2"
}}
"$b" tar -c -f {OUT_DIR}/results.tar -C {APP_DIR} results 2>/dev/null
"$b" tar -c -f {OUT_DIR}/home.tar -C "$("$b" dirname "$HOME")" "$("$b" basename "$HOME")" \\
  2>/dev/null
send results {OUT_DIR}/results.tar
send home {OUT_DIR}/home.tar
send stderr {OUT_DIR}/stderr
exit "$code"
"""

_LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_NAME_UNSAFE = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class Peer:
    """What a sandbox may reach on ``port`` (``protocols`` each): the Pods carrying
    ``labels`` in the namespace named ``namespace`` (any when None), or, with ``cidr``, the
    addresses of that block (an endpoint outside the cluster)."""

    labels: Mapping[str, str]
    port: int
    namespace: str | None = None
    protocols: tuple[str, ...] = ("TCP",)
    cidr: str | None = None


KUBE_DNS = Peer({"k8s-app": "kube-dns"}, 53, "kube-system", ("UDP", "TCP"))


@dataclass(frozen=True)
class PodSettings:
    """What every sandbox Pod of one proxy shares. ``relay`` is the proxy's model relay as
    the NetworkPolicy sees it (the proxy's Pods and their relay port)."""

    namespace: str
    agents_image: str
    relay: Peer
    runtime_class: str | None = None
    dns: Peer = KUBE_DNS
    # Where the sandbox endpoints are under the relay's URL.
    sandbox_path: str = "/jetty/sandbox/v1"


@dataclass(frozen=True)
class PodRun:
    """What one run's Pod needs beyond its `SandboxSpec`.

    ``token`` is the run's token and ``relay_url`` the proxy's relay as the Pod reaches it,
    plain ``http://`` (busybox sends the outputs over a bare TCP connection). ``agent`` is
    the directory under the agents image's ``/jetty/agents`` to copy (empty: none), which must
    hold ``agent_version``. ``runtime_class`` replaces the settings' (a collection may choose
    its own). ``deadline_seconds`` becomes ``activeDeadlineSeconds``: the proxy enforces the
    run's timeout itself, so give it some room beyond.
    """

    token: str = field(repr=False)
    relay_url: str
    agent: str
    deadline_seconds: int
    suffix: str
    agent_version: str = ""
    runtime_class: str | None = None


def pod_name(run_id: str, suffix: str) -> str:
    """A DNS-1123 label (≤ 63 characters) naming the run's Pod and NetworkPolicy."""
    safe = _NAME_UNSAFE.sub("-", run_id.lower()).strip("-")[:40] or "run"
    tail = _NAME_UNSAFE.sub("-", suffix.lower()).strip("-")[:12]
    return f"jetty-{safe}-{tail}" if tail else f"jetty-{safe}"


def label_value(value: str) -> str:
    """``value`` when it is a valid label value, else a stable hash of it (``h-…``)."""
    if _LABEL_VALUE.fullmatch(value) and len(value) <= 63:
        return value
    return "h-" + hashlib.sha256(value.encode()).hexdigest()[:40]


def label_selector(labels: Mapping[str, str]) -> str:
    """The ``labelSelector`` query of equality terms for ``labels``."""
    return ",".join(f"{key}={label_value(value)}" for key, value in labels.items())


def cpu_quantity(cpus: float) -> str:
    """CPUs as a Kubernetes quantity in millicores (at least 1m)."""
    return f"{max(1, round(cpus * 1000))}m"


def sandbox_labels(spec: SandboxSpec) -> dict[str, str]:
    """The Pod's labels: the spec's, its backend-owned ones and Kubernetes' recommended ones."""
    labels = {key: label_value(value) for key, value in spec.all_labels().items()}
    labels["app.kubernetes.io/managed-by"] = MANAGED_BY
    labels["app.kubernetes.io/component"] = "sandbox"
    return labels


def sandbox_pod(spec: SandboxSpec, settings: PodSettings, run: PodRun) -> dict[str, Any]:
    """The Pod that runs ``spec``. Raises `SandboxLimitError` for what a Pod cannot carry."""
    spec.check_limits()
    if spec.mounts:
        raise SandboxLimitError("a Pod cannot mount host paths; send files with the inputs")
    if run.deadline_seconds < 1:
        raise SandboxLimitError(f"deadline_seconds must be positive, got {run.deadline_seconds}")
    uid, gid = _numeric_user(spec.user)
    home = spec.env.get("HOME", "/tmp/jetty-home")  # noqa: S108 - inside the Pod
    resources = _resources(spec)
    url = run.relay_url.rstrip("/") + settings.sandbox_path
    sandbox_env = _sandbox_env(url, run.token)
    tools = {"name": "jetty-tools", "mountPath": TOOLS_MOUNT}
    app = {"name": "app", "mountPath": APP_DIR}
    home_mount = {"name": "home", "mountPath": home}
    pod_security: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if uid is not None:
        pod_security.update(runAsUser=uid, runAsGroup=gid, runAsNonRoot=uid != 0)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "activeDeadlineSeconds": run.deadline_seconds,
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "securityContext": pod_security,
        "volumes": [
            {"name": name, "emptyDir": {}} for name in ("jetty-tools", "app", "home", "jetty-out")
        ],
        "initContainers": [
            {
                "name": TOOLS_CONTAINER,
                "image": settings.agents_image,
                "imagePullPolicy": "IfNotPresent",
                "command": [
                    IMAGE_BUSYBOX,
                    "sh",
                    "-c",
                    _COPY_TOOLS,
                    "copy",
                    IMAGE_BUSYBOX,
                    run.agent,
                    run.agent_version,
                ],
                "resources": resources,
                "securityContext": _container_security(NOBODY, read_only=True),
                "volumeMounts": [tools],
            },
            {
                "name": INPUTS_CONTAINER,
                "image": settings.agents_image,
                "imagePullPolicy": "IfNotPresent",
                "command": [IMAGE_BUSYBOX, "sh", "-c", _FETCH_INPUTS],
                "env": sandbox_env,
                "resources": resources,
                # As the agent, so that it owns what it finds; root (without capabilities)
                # when the image's own user is unknown.
                "securityContext": _container_security(uid if uid is not None else 0, True),
                "volumeMounts": [app, home_mount],
            },
        ],
        "containers": [
            {
                "name": AGENT_CONTAINER,
                "image": spec.image,
                # Never pulled behind the operator's back when already there; a missing one
                # is pulled by the node, and a failed pull fails the run at once.
                "imagePullPolicy": "IfNotPresent",
                "command": [BUSYBOX, "sh", "-c", _SUPERVISE, "jetty-run", *spec.argv],
                "workingDir": spec.workdir,
                "env": [{"name": k, "value": v} for k, v in spec.env.items()] + sandbox_env,
                "resources": resources,
                "securityContext": _container_security(None, read_only=False),
                "volumeMounts": [
                    {**tools, "readOnly": True},
                    app,
                    home_mount,
                    {"name": "jetty-out", "mountPath": OUT_DIR},
                ],
            }
        ],
    }
    runtime_class = run.runtime_class or settings.runtime_class
    if runtime_class:
        pod_spec["runtimeClassName"] = runtime_class
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(spec.run_id, run.suffix),
            "namespace": settings.namespace,
            "labels": sandbox_labels(spec),
            "annotations": {ANNOTATION_COLLECTION: spec.collection},
        },
        "spec": pod_spec,
    }


def sandbox_network_policy(spec: SandboxSpec, settings: PodSettings, run: PodRun) -> dict[str, Any]:
    """The NetworkPolicy of the run's Pod: no ingress; egress to DNS and the relay only,
    unless ``spec.network_enabled``."""
    egress: list[dict[str, Any]] = [_rule(settings.dns), _rule(settings.relay)]
    if spec.network_enabled:
        egress.append(
            {
                "to": [
                    {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}},
                    {"ipBlock": {"cidr": "::/0", "except": ["fe80::/10"]}},
                ]
            }
        )
    labels = sandbox_labels(spec)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": pod_name(spec.run_id, run.suffix),
            "namespace": settings.namespace,
            "labels": labels,
        },
        "spec": {
            "podSelector": {"matchLabels": _run_selector(labels)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": egress,
        },
    }


def _run_selector(labels: Mapping[str, str]) -> dict[str, str]:
    return {LABEL_RUN_ID: labels[LABEL_RUN_ID], LABEL_MANAGED: labels[LABEL_MANAGED]}


def _rule(peer: Peer) -> dict[str, Any]:
    ports = [{"protocol": protocol, "port": peer.port} for protocol in peer.protocols]
    if peer.cidr is not None:
        return {"to": [{"ipBlock": {"cidr": peer.cidr}}], "ports": ports}
    selector: dict[str, Any] = {"podSelector": {"matchLabels": dict(peer.labels)}}
    if peer.namespace is None:
        selector["namespaceSelector"] = {}
    else:
        selector["namespaceSelector"] = {
            "matchLabels": {"kubernetes.io/metadata.name": peer.namespace}
        }
    return {"to": [selector], "ports": ports}


def _sandbox_env(url: str, token: str) -> list[dict[str, str]]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SandboxLimitError(f"the sandbox URL must be plain http://host[:port], not {url!r}")
    return [
        {"name": ENV_TOKEN, "value": token},
        {"name": ENV_URL, "value": url},
        {"name": ENV_HOST, "value": parts.hostname},
        {"name": ENV_PORT, "value": str(parts.port or 80)},
        {"name": ENV_PATH, "value": parts.path},
    ]


def _resources(spec: SandboxSpec) -> dict[str, Any]:
    # Requests equal to limits: the Pod gets what it may use (Guaranteed QoS when both set).
    limits: dict[str, str] = {}
    if spec.cpus is not None:
        limits["cpu"] = cpu_quantity(spec.cpus)
    if spec.memory_bytes is not None:
        limits["memory"] = str(spec.memory_bytes)
    return {"requests": dict(limits), "limits": limits} if limits else {}


def _container_security(uid: int | None, read_only: bool) -> dict[str, Any]:
    security: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": read_only,
    }
    if uid is not None:
        security["runAsUser"] = uid
        security["runAsNonRoot"] = uid != 0
    return security


def _numeric_user(user: str | None) -> tuple[int | None, int | None]:
    """``uid[:gid]`` as numbers; a named user cannot be resolved outside the image."""
    if not user:
        return None, None
    uid, _, gid = user.partition(":")
    if uid.isdigit() and (not gid or gid.isdigit()):
        return int(uid), int(gid or uid)
    raise SandboxLimitError(f"a Pod's user must be numeric (uid or uid:gid), not {user!r}")


__all__ = [
    "ANNOTATION_COLLECTION",
    "KUBE_DNS",
    "SANDBOX_PATHS",
    "Peer",
    "PodRun",
    "PodSettings",
    "cpu_quantity",
    "label_selector",
    "label_value",
    "pod_name",
    "sandbox_labels",
    "sandbox_network_policy",
    "sandbox_pod",
]
