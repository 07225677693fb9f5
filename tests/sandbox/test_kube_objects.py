"""The Pod and NetworkPolicy of a sandbox, against the published Kubernetes schemas."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from proxy.agents.install import MARKER
from proxy.sandbox.base import (
    LABEL_COLLECTION,
    LABEL_MANAGED,
    LABEL_OWNER,
    LABEL_RUN_ID,
    LABEL_SERVER,
    Mount,
    SandboxLimitError,
    SandboxSpec,
)
from proxy.sandbox.kube_objects import (
    AGENT_MARKER,
    ANNOTATION_COLLECTION,
    BUSYBOX,
    ENV_TOKEN,
    KUBE_DNS,
    TOOLS_MOUNT,
    Peer,
    PodRun,
    PodSettings,
    cpu_quantity,
    label_selector,
    label_value,
    pod_name,
    sandbox_network_policy,
    sandbox_pod,
)
from tests.support.kube.schemas import SUPPORTED, validate

RELAY = Peer({"app.kubernetes.io/name": "jetty-proxy"}, 8081, "jetty-proxy")
SETTINGS = PodSettings(
    namespace="jetty-sandboxes",
    agents_image="127.0.0.1:5000/jetty-proxy-agents:claude-2.1.328",
    relay=RELAY,
)
RUN = PodRun(
    token="jr-secret-token",
    relay_url="http://jetty-proxy-relay.jetty-proxy:8081",
    agent="claude-code",
    agent_version="2.1.328",
    deadline_seconds=1860,
    suffix="9f3a",
)
SPEC = SandboxSpec(
    run_id="0a1b2c3d",
    collection="acme",
    image="127.0.0.1:5000/jetty/testenv:bookworm",
    argv=["/opt/jetty/agents/claude-code/claude", "-p", "hello"],
    env={"HOME": "/tmp/jetty-home", "ANTHROPIC_BASE_URL": "http://relay"},
    cpus=1.5,
    memory_bytes=2 * 1024**3,
    user="1000:1000",
    labels={LABEL_OWNER: "0123456789abcdef", LABEL_SERVER: "feedc0de00112233"},
)
RELAY_PORT = {"protocol": "TCP", "port": 8081}
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return [*spec["initContainers"], *spec["containers"]]


@pytest.mark.parametrize("version", SUPPORTED)
@pytest.mark.parametrize(
    "spec",
    [
        SPEC,
        dataclasses.replace(SPEC, cpus=None, memory_bytes=None, user=None, network_enabled=True),
        dataclasses.replace(SPEC, user="0"),
    ],
    ids=["limits-and-user", "image-user-no-limits", "root"],
)
def test_objects_validate_strictly_against_the_supported_kubernetes(
    version: str, spec: SandboxSpec
) -> None:
    run = dataclasses.replace(RUN, runtime_class="gvisor")
    assert validate(sandbox_pod(spec, SETTINGS, run), version) == []
    assert validate(sandbox_network_policy(spec, SETTINGS, run), version) == []


def test_the_schema_check_catches_a_malformed_pod() -> None:
    pod = sandbox_pod(SPEC, SETTINGS, RUN)
    pod["spec"]["restartPolicy"] = 0
    pod["spec"]["containers"][0]["resurces"] = {}
    del pod["spec"]["containers"][0]["name"]
    fields = {cause.field for cause in validate(pod, SUPPORTED[0])}
    assert fields == {
        "spec.restartPolicy",
        "spec.containers[0].resurces",
        "spec.containers[0].name",
    }


def test_pod_is_locked_down() -> None:
    pod = sandbox_pod(SPEC, SETTINGS, RUN)
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["activeDeadlineSeconds"] == 1860
    assert spec["securityContext"] == {
        "seccompProfile": {"type": "RuntimeDefault"},
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "runAsNonRoot": True,
    }
    assert "runtimeClassName" not in spec
    assert "hostNetwork" not in spec and "hostPID" not in spec
    for container in all_containers(pod):
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["privileged"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert container["resources"]["requests"] == container["resources"]["limits"]
        assert container["resources"]["limits"] == {"cpu": "1500m", "memory": str(2 * 1024**3)}


def test_image_user_and_no_limits() -> None:
    spec = dataclasses.replace(SPEC, user=None, cpus=None, memory_bytes=None)
    pod = sandbox_pod(spec, SETTINGS, RUN)
    assert pod["spec"]["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    tools, inputs = pod["spec"]["initContainers"]
    # The copy runs as nobody; the inputs as root without capabilities, since the agent's
    # own user is only known to its image.
    assert tools["securityContext"]["runAsUser"] == 65534
    assert tools["securityContext"]["runAsNonRoot"] is True
    assert inputs["securityContext"]["runAsUser"] == 0
    assert all(container["resources"] == {} for container in all_containers(pod))


def test_runtime_class_from_settings_and_from_the_run() -> None:
    settings = dataclasses.replace(SETTINGS, runtime_class="gvisor")
    assert sandbox_pod(SPEC, settings, RUN)["spec"]["runtimeClassName"] == "gvisor"
    run = dataclasses.replace(RUN, runtime_class="kata")
    assert sandbox_pod(SPEC, settings, run)["spec"]["runtimeClassName"] == "kata"


def test_labels_like_docker_and_the_collection_kept_exactly() -> None:
    pod = sandbox_pod(SPEC, SETTINGS, RUN)
    labels = pod["metadata"]["labels"]
    assert labels[LABEL_MANAGED] == "true"
    assert labels[LABEL_RUN_ID] == "0a1b2c3d"
    assert labels[LABEL_COLLECTION] == "acme"
    assert labels[LABEL_OWNER] == "0123456789abcdef"
    assert labels[LABEL_SERVER] == "feedc0de00112233"
    assert pod["metadata"]["annotations"][ANNOTATION_COLLECTION] == "acme"
    assert pod["metadata"]["namespace"] == "jetty-sandboxes"

    odd = dataclasses.replace(SPEC, collection="acme-")  # a valid collection, not a label value
    pod = sandbox_pod(odd, SETTINGS, RUN)
    assert pod["metadata"]["labels"][LABEL_COLLECTION].startswith("h-")
    assert pod["metadata"]["annotations"][ANNOTATION_COLLECTION] == "acme-"
    assert validate(pod, SUPPORTED[-1]) == []


def test_init_containers_copy_the_agent_then_fetch_the_inputs() -> None:
    pod = sandbox_pod(SPEC, SETTINGS, RUN)
    tools, inputs = pod["spec"]["initContainers"]
    assert tools["image"] == inputs["image"] == SETTINGS.agents_image
    assert tools["command"][-2] == "claude-code"  # only the run's agent is copied
    assert tools["securityContext"]["readOnlyRootFilesystem"] is True
    assert inputs["securityContext"]["readOnlyRootFilesystem"] is True
    inputs_env = {item["name"]: item["value"] for item in inputs["env"]}
    assert inputs_env[ENV_TOKEN] == "jr-secret-token"
    assert inputs_env["JETTY_SANDBOX_URL"] == (
        "http://jetty-proxy-relay.jetty-proxy:8081/jetty/sandbox/v1"
    )
    assert {m["mountPath"] for m in inputs["volumeMounts"]} == {"/app", "/tmp/jetty-home"}


def test_agent_container_runs_the_argv_under_the_supervisor() -> None:
    pod = sandbox_pod(SPEC, SETTINGS, RUN)
    (agent,) = pod["spec"]["containers"]
    assert agent["image"] == SPEC.image
    assert agent["command"][:3] == [BUSYBOX, "sh", "-c"]
    assert agent["command"][4:] == ["jetty-run", *SPEC.argv]
    assert agent["workingDir"] == "/app"
    assert agent["securityContext"]["readOnlyRootFilesystem"] is False
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert mounts[TOOLS_MOUNT]["readOnly"] is True
    env = {item["name"]: item["value"] for item in agent["env"]}
    assert env["ANTHROPIC_BASE_URL"] == "http://relay"
    assert env["JETTY_SANDBOX_HOST"] == "jetty-proxy-relay.jetty-proxy"
    assert env["JETTY_SANDBOX_PORT"] == "8081"
    assert env["JETTY_SANDBOX_PATH"] == "/jetty/sandbox/v1"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mounts": (Mount("/host", "/in"),)}, "host paths"),
        ({"user": "agent"}, "numeric"),
        ({"argv": []}, "argv"),
        ({"cpus": 0.0}, "cpus"),
    ],
)
def test_what_a_pod_cannot_carry_is_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(SandboxLimitError, match=message):
        sandbox_pod(dataclasses.replace(SPEC, **change), SETTINGS, RUN)


@pytest.mark.parametrize("url", ["https://relay:8081", "unix:///run/relay.sock", "http://"])
def test_the_sandbox_url_must_be_plain_http(url: str) -> None:
    with pytest.raises(SandboxLimitError, match="plain http"):
        sandbox_pod(SPEC, SETTINGS, dataclasses.replace(RUN, relay_url=url))


def test_a_deadline_is_required() -> None:
    with pytest.raises(SandboxLimitError, match="deadline"):
        sandbox_pod(SPEC, SETTINGS, dataclasses.replace(RUN, deadline_seconds=0))


def test_network_policy_allows_only_dns_and_the_relay() -> None:
    policy = sandbox_network_policy(SPEC, SETTINGS, RUN)
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {LABEL_RUN_ID: "0a1b2c3d", LABEL_MANAGED: "true"}}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == []
    dns, relay = spec["egress"]
    assert dns["to"] == [
        {
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        }
    ]
    assert dns["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    assert relay["to"][0]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/name": "jetty-proxy"}
    }
    assert relay["ports"] == [{"protocol": "TCP", "port": 8081}]
    assert policy["metadata"]["name"] == sandbox_pod(SPEC, SETTINGS, RUN)["metadata"]["name"]


def test_network_enabled_adds_the_internet_but_not_link_local() -> None:
    spec = dataclasses.replace(SPEC, network_enabled=True)
    egress = sandbox_network_policy(spec, SETTINGS, RUN)["spec"]["egress"]
    assert len(egress) == 3
    assert egress[2]["to"][0]["ipBlock"] == {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}


def test_dns_peer_in_any_namespace() -> None:
    settings = dataclasses.replace(SETTINGS, dns=dataclasses.replace(KUBE_DNS, namespace=None))
    dns = sandbox_network_policy(SPEC, settings, RUN)["spec"]["egress"][0]
    assert dns["to"][0]["namespaceSelector"] == {}


@pytest.mark.parametrize(
    ("run_id", "suffix"),
    [("0a1b2c3d", "9f3a"), ("Run_With.Odd/Chars", "AB"), ("x" * 300, "y" * 40), ("---", "")],
)
def test_pod_names_are_dns_labels(run_id: str, suffix: str) -> None:
    name = pod_name(run_id, suffix)
    assert DNS_LABEL.fullmatch(name), name


def test_label_values_and_selectors() -> None:
    assert label_value("acme") == "acme"
    assert label_value("a" * 63) == "a" * 63
    hashed = label_value("a" * 64)
    assert hashed.startswith("h-") and len(hashed) <= 63
    assert label_value("x.") == label_value("x.")  # stable
    assert label_selector({LABEL_MANAGED: "true", LABEL_OWNER: "o"}) == (
        "jetty-proxy.managed=true,jetty-proxy.owner=o"
    )


def test_cpu_quantities() -> None:
    assert cpu_quantity(2) == "2000m"
    assert cpu_quantity(0.25) == "250m"
    assert cpu_quantity(0.0001) == "1m"


def test_the_token_stays_out_of_reprs() -> None:
    assert "jr-secret-token" not in repr(RUN)


@pytest.mark.parametrize("version", SUPPORTED)
def test_a_relay_outside_the_cluster_is_an_address_block(version: str) -> None:
    outside = dataclasses.replace(SETTINGS, relay=Peer({}, 8081, cidr="10.0.0.7/32"))
    policy = sandbox_network_policy(SPEC, outside, RUN)
    relay = policy["spec"]["egress"][1]
    assert relay == {"to": [{"ipBlock": {"cidr": "10.0.0.7/32"}}], "ports": [RELAY_PORT]}
    assert validate(policy, version) == []


def test_the_tools_step_copies_the_pinned_agent_version_only() -> None:
    tools = sandbox_pod(SPEC, SETTINGS, RUN)["spec"]["initContainers"][0]
    assert tools["command"][-2:] == ["claude-code", "2.1.328"]
    # It reads the version from the marker an install leaves, kept in the agents image.
    assert AGENT_MARKER == MARKER
    assert f"/{AGENT_MARKER}" in tools["command"][3]
