"""Kubernetes backend: one Pod per sandbox, over the Kubernetes API with lightkube.

`open_kubernetes` (the ``kubernetes`` value of the ``backend`` setting) opens the cluster of
``kubeconfig`` (else ``$KUBECONFIG``, else the in-cluster service account) and checks, with
SelfSubjectAccessReviews, that it may do everything the backend does in ``kube_namespace``
(`PERMISSIONS`); it names what is missing. A sandbox is a Pod built by `kube_objects` and
driven by `kube_sandbox`: the agent comes from the agents image (``agents_image``), by the
name and version the spec asks for; the Pod reaches the model relay at ``relay_url`` with
the run's token, over the network its NetworkPolicy allows (the relay and DNS, and more
only with ``network_enabled``), and moves its files through the relay's network listener
(`kube_exchange`, served from `KubernetesBackend.sandbox_routes`), never with ``pods/exec``.

lightkube is the ``kubernetes`` extra: this module imports it, so import the module only
when the backend is chosen (`proxy.sandbox.selection` does).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from lightkube import AsyncClient, KubeConfig
from lightkube.core.exceptions import ConfigError
from lightkube.resources.authorization_v1 import SelfSubjectAccessReview
from lightkube.resources.core_v1 import Pod
from lightkube.resources.networking_v1 import NetworkPolicy
from starlette.routing import BaseRoute

from proxy.sandbox.base import (
    AGENTS_DIR,
    LABEL_MANAGED,
    LABEL_OWNER,
    LABEL_RUN_ID,
    LABEL_SERVER,
    Capabilities,
    EngineUnavailable,
    Isolation,
    Orphans,
    SandboxError,
    SandboxLimitError,
    SandboxSpec,
)
from proxy.sandbox.kube_exchange import SandboxExchange
from proxy.sandbox.kube_objects import (
    Peer,
    PodRun,
    PodSettings,
    label_value,
    sandbox_network_policy,
    sandbox_pod,
)
from proxy.sandbox.kube_sandbox import ARCHIVE_SLACK, KubernetesSandbox, call, delete

if TYPE_CHECKING:
    from proxy.settings import Settings

logger = logging.getLogger(__name__)

# What the backend calls, as (verb, resource, subresource, group): the start-up check.
PERMISSIONS = (
    ("create", "pods", "", ""),
    ("get", "pods", "", ""),
    ("list", "pods", "", ""),
    ("watch", "pods", "", ""),
    ("delete", "pods", "", ""),
    ("get", "pods", "log", ""),
    ("create", "networkpolicies", "", "networking.k8s.io"),
    ("list", "networkpolicies", "", "networking.k8s.io"),
    ("delete", "networkpolicies", "", "networking.k8s.io"),
)
# The label of the proxy's own Pods in the manifests (deploy/kubernetes): what a sandbox's
# NetworkPolicy lets it reach, on the relay's port.
PROXY_LABELS = {"app.kubernetes.io/name": "jetty-proxy"}
# activeDeadlineSeconds beyond the run's own timeout: the proxy stops the run itself, and
# the Pod still needs time to start (pulls, init) and to send its outputs.
DEADLINE_MARGIN_SECONDS = 300


async def open_kubernetes(settings: Settings, owner: str | None) -> KubernetesBackend:
    """The backend on the cluster the settings name. `SandboxError` when a setting it needs
    is missing, `EngineUnavailable` when the API does not answer or refuses it something it
    needs (the message names each missing permission)."""
    if settings.relay_url is None or settings.relay_port is None:
        raise SandboxError(
            "the kubernetes backend needs relay_url (how sandbox Pods reach this server's model"
            " relay, e.g. http://jetty-proxy-relay.jetty-proxy.svc:8081) and relay_port (where"
            " the relay listens for them)"
        )
    kubeconfig = settings.kubeconfig_file
    try:
        config = (
            KubeConfig.from_file(kubeconfig)
            if kubeconfig is not None
            else KubeConfig.from_service_account()
        )
    except ConfigError as exc:
        where = kubeconfig or "the in-cluster service account"
        raise EngineUnavailable(f"no Kubernetes configuration from {where}: {exc}") from exc
    pods = PodSettings(
        namespace=settings.kube_namespace,
        agents_image=settings.agents_image or _pinned_agents_image(),
        relay=relay_peer(settings.relay_url, settings.relay_port),
        runtime_class=settings.kube_runtime_class,
    )
    exchange = SandboxExchange(
        part_max_bytes=max(settings.results_max_bytes, settings.session_max_bytes) + ARCHIVE_SLACK
    )
    client = AsyncClient(config, namespace=settings.kube_namespace)
    backend = KubernetesBackend(client, pods, exchange, default_timeout=settings.run_timeout_sec)
    try:
        missing = await backend.missing_permissions()
    except BaseException:
        await backend.aclose()
        raise
    if missing:
        await backend.aclose()
        raise EngineUnavailable(
            f"the Kubernetes account of this proxy may not {', '.join(missing)} in namespace"
            f" {settings.kube_namespace!r}: grant them (the Role in"
            " deploy/kubernetes/base/rbac.yaml does)"
        )
    return backend


def relay_peer(relay_url: str, relay_port: int) -> Peer:
    """The relay as a sandbox's NetworkPolicy names it.

    For a Service (``NAME.NAMESPACE[.svc…]``): the proxy's Pods (`PROXY_LABELS`) in that
    namespace, on ``relay_port`` (the Pods' own port, which a policy sees). For an address
    (a proxy outside the cluster): that address, on the URL's port.
    """
    parts = urlsplit(relay_url)
    host = parts.hostname or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        labels = host.split(".")
        if len(labels) >= 2 and (len(labels) == 2 or labels[2] == "svc"):
            return Peer(PROXY_LABELS, relay_port, labels[1])
        raise SandboxError(
            f"relay_url {relay_url!r} names neither a Service (NAME.NAMESPACE.svc) nor an"
            " address: sandbox NetworkPolicies could not let Pods reach it"
        ) from None
    return Peer({}, parts.port or 80, cidr=f"{address}/{address.max_prefixlen}")


def _pinned_agents_image() -> str:
    # Imported here: agents (and their image) are a layer above the sandboxes.
    from proxy.agents.image import pinned_agents_image

    return pinned_agents_image()


class KubernetesBackend:
    """Launches `KubernetesSandbox`es as Pods; their files move through ``exchange``.

    ``default_timeout`` sets a Pod's deadline when a spec has no timeout of its own.
    """

    name = "kubernetes"
    capabilities = Capabilities(
        runs_images=True,
        # The command reaches the Pod as given.
        inline_files=True,
        isolation=Isolation.FULL,
    )

    def __init__(
        self,
        client: AsyncClient,
        settings: PodSettings,
        exchange: SandboxExchange,
        *,
        default_timeout: float = 1800,
    ) -> None:
        self._client = client
        self._settings = settings
        self._exchange = exchange
        self._default_timeout = default_timeout

    @classmethod
    def from_kubeconfig(
        cls, kubeconfig: Path, settings: PodSettings, exchange: SandboxExchange
    ) -> KubernetesBackend:
        """A backend for the cluster of ``kubeconfig`` (tests open it this way)."""
        client = AsyncClient(KubeConfig.from_file(kubeconfig), namespace=settings.namespace)
        return cls(client, settings, exchange)

    def sandbox_routes(self) -> Sequence[BaseRoute]:
        """The Pods' file exchange, for the relay's network listener."""
        return self._exchange.routes()

    async def ping(self) -> bool:
        try:
            await self._review("create", "pods", "", "")
        except SandboxError:
            return False
        return True

    async def missing_permissions(self) -> list[str]:
        """What the backend needs but may not do in its namespace ("get pods/log", …)."""
        missing = []
        for verb, resource, subresource, group in PERMISSIONS:
            if not await self._review(verb, resource, subresource, group):
                missing.append(f"{verb} {resource}" + (f"/{subresource}" if subresource else ""))
        return missing

    async def _review(self, verb: str, resource: str, subresource: str, group: str) -> bool:
        attributes = {"namespace": self._settings.namespace, "verb": verb, "resource": resource}
        if subresource:
            attributes["subresource"] = subresource
        if group:
            attributes["group"] = group
        review = SelfSubjectAccessReview.from_dict(
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes},
            }
        )
        answer = await call("checking permissions", self._client.create(cast(Any, review)))
        return bool(answer.status and answer.status.allowed)

    async def check_image(self, image: str) -> None:
        """Nothing to check here: the node pulls, and a failed pull fails the run at once."""

    async def launch(self, spec: SandboxSpec) -> KubernetesSandbox:
        spec.check_limits()
        if spec.mounts:
            raise SandboxLimitError("a Pod cannot mount host paths")
        relay, agent = spec.relay, spec.agent
        if relay is None or relay.url is None:
            raise SandboxLimitError("a Pod reaches the model relay over the network: no URL")
        if agent is not None and agent.path != f"{AGENTS_DIR}/{agent.name}":
            raise SandboxLimitError(f"the agents image has agents under {AGENTS_DIR}")
        timeout = spec.timeout_seconds or self._default_timeout
        run = PodRun(
            token=relay.token,
            relay_url=relay.url,
            agent=agent.name if agent is not None else "",
            agent_version=agent.version if agent is not None else "",
            deadline_seconds=math.ceil(timeout) + DEADLINE_MARGIN_SECONDS,
            suffix=secrets.token_hex(3),
        )
        pod = sandbox_pod(spec, self._settings, run)
        policy = sandbox_network_policy(spec, self._settings, run)
        exchange = self._exchange.open(relay.token)
        return KubernetesSandbox(self._client, self._exchange, exchange, spec, pod, policy)

    async def remove_orphans(self, orphans: Orphans) -> list[str]:
        namespace = self._settings.namespace
        labels: dict[str, Any] = {LABEL_MANAGED: "true"}
        if orphans.owner is not None:
            labels[LABEL_OWNER] = label_value(orphans.owner)
        removed: list[str] = []
        pods = self._client.list(Pod, namespace=namespace, labels=labels)
        async for pod in cast(Any, pods):
            found = pod.metadata.labels or {}
            run_id = found.get(LABEL_RUN_ID, "")
            if pod.metadata.deletionTimestamp or orphans.kept(run_id, found.get(LABEL_SERVER)):
                continue  # kept, or going already
            await delete(self._client, Pod, pod.metadata.name, namespace)
            removed.append(run_id)
        # Policies of those Pods, and of Pods that were never made (a start cut short).
        policies = self._client.list(NetworkPolicy, namespace=namespace, labels=labels)
        async for policy in cast(Any, policies):
            found = policy.metadata.labels or {}
            if not orphans.kept(found.get(LABEL_RUN_ID, ""), found.get(LABEL_SERVER)):
                await delete(self._client, NetworkPolicy, policy.metadata.name, namespace)
        return removed

    async def aclose(self) -> None:
        await self._client.close()


__all__ = [
    "PERMISSIONS",
    "KubernetesBackend",
    "KubernetesSandbox",
    "open_kubernetes",
    "relay_peer",
]
