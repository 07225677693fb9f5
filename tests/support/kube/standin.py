"""A Kubernetes API stand-in for tests: a real HTTP server whose Pods are Docker containers.

It stands in for a cluster that cannot run here. It follows the real API server (Kubernetes
1.30 to 1.37: core ``v1`` Pods and their logs, ``networking.k8s.io/v1`` NetworkPolicies,
``authorization.k8s.io/v1`` SelfSubjectAccessReviews) in what a sandbox backend relies on:
URLs, JSON shapes, status codes, ``Status`` errors, watch streams and followed logs. Every
object it is sent is validated against the published schemas of the version it plays
(`tests.support.kube.validation`), and every Pod runs on the test Docker engine
(`tests.support.kube.kubelet`, which says what is not emulated). It is not a cluster: no
scheduler, no Pod network, NetworkPolicies are stored but not enforced.

    with kube_standin(docker_host, tmp_path) as kube:
        client = lightkube.AsyncClient(lightkube.KubeConfig.from_file(kube.kubeconfig))
        kube.access.denied.add(("create", "pods"))     # RBAC: now a 403
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import yaml
from starlette.applications import Starlette

from proxy.sandbox.dockerapi import Engine
from tests.support.kube.api import Access, KubeApi, create_app
from tests.support.kube.kubelet import LABEL_STANDIN, Kubelet
from tests.support.kube.store import Store
from tests.support.live import serve

NAMESPACE = "jetty-sandboxes"


@dataclass
class KubeStandIn:
    """A running stand-in: where it listens, its kubeconfig, and knobs for tests."""

    url: str
    token: str
    kubeconfig: Path
    namespace: str
    instance: str
    access: Access
    # Unknown fields the server accepted with a warning (fieldValidation=Warn).
    warnings: list[str] = field(default_factory=list)
    # Every object created, as the client sent it (deleted ones too).
    received: list[dict[str, Any]] = field(default_factory=list)


@contextlib.contextmanager
def kube_standin(
    docker_host: str,
    directory: Path,
    *,
    namespaces: tuple[str, ...] = (NAMESPACE,),
    version: str = "1.37",
    pull_registries: tuple[str, ...] = (),
) -> Iterator[KubeStandIn]:
    """Run a stand-in until the block ends; then every Pod it ran is removed from the engine."""
    token = secrets.token_urlsafe(24)
    instance = secrets.token_hex(6)
    access = Access()
    warnings: list[str] = []
    received: list[dict[str, Any]] = []
    volumes = directory / "kube-volumes"
    volumes.mkdir(parents=True, exist_ok=True)
    engine = Engine.from_url(docker_host)
    store = Store()
    kubelet = Kubelet(store, engine, volumes, instance=instance, pull_registries=pull_registries)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            async with anyio.create_task_group() as tasks:
                kubelet.start(tasks)
                yield
                with anyio.CancelScope(shield=True):
                    await kubelet.close()
                tasks.cancel_scope.cancel()
        finally:
            await engine.aclose()

    api = KubeApi(
        store,
        kubelet,
        token=token,
        access=access,
        namespaces=set(namespaces),
        version=version,
        warnings=warnings,
        received=received,
    )
    with serve(create_app(api, lifespan)) as url:
        kubeconfig = directory / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(_kubeconfig(url, token, namespaces[0])))
        yield KubeStandIn(
            url, token, kubeconfig, namespaces[0], instance, access, warnings, received
        )
    _check_removed(docker_host, instance)


def _kubeconfig(url: str, token: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "standin", "cluster": {"server": url}}],
        "users": [{"name": "standin", "user": {"token": token}}],
        "contexts": [
            {
                "name": "standin",
                "context": {"cluster": "standin", "user": "standin", "namespace": namespace},
            }
        ],
        "current-context": "standin",
    }


def standin_containers(docker_host: str, instance: str) -> list[dict[str, Any]]:
    """The engine's containers of the stand-in ``instance`` (running or not)."""
    filters = json.dumps({"label": [f"{LABEL_STANDIN}={instance}"]})
    if docker_host.startswith("unix://"):
        transport = httpx.HTTPTransport(uds=docker_host.removeprefix("unix://"))
        base = "http://docker"
    else:
        transport, base = httpx.HTTPTransport(), "http://" + docker_host.split("://", 1)[1]
    with httpx.Client(transport=transport, base_url=f"{base}/v1.41", timeout=30) as client:
        response = client.get("/containers/json", params={"all": "1", "filters": filters})
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()
        return found


def _check_removed(docker_host: str, instance: str) -> None:
    try:
        left = standin_containers(docker_host, instance)
    except httpx.HTTPError:
        return
    if left:
        raise AssertionError(f"the stand-in left {len(left)} container(s) on the engine")
