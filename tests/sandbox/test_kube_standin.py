"""The Kubernetes API stand-in's HTTP contract: auth, RBAC, validation, Status errors.

Driven with lightkube, the client the Kubernetes backend uses, and with raw HTTP where the
exact bytes matter. The Pods here never need to run; see test_kube_standin_pods.py for that.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import httpx
import pytest
from lightkube import ApiError, AsyncClient
from lightkube.operators import in_, not_equal
from lightkube.resources.core_v1 import Pod
from lightkube.resources.networking_v1 import NetworkPolicy

from proxy.sandbox.base import LABEL_OWNER, LABEL_SERVER, SandboxSpec
from proxy.sandbox.kube_objects import (
    Peer,
    PodRun,
    PodSettings,
    sandbox_network_policy,
    sandbox_pod,
)
from tests.sandbox.conftest import BUSYBOX
from tests.support.kube.schemas import validate
from tests.support.kube.standin import KubeStandIn

pytestmark = [pytest.mark.kube, pytest.mark.anyio]


def pod(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "standin-test"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": BUSYBOX,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sleep", "600"],
                }
            ],
            **spec,
        },
    }


def as_pod(body: dict[str, Any]) -> Pod:
    return cast(Pod, Pod.from_dict(body))


@pytest.fixture
def raw(kube: KubeStandIn) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {kube.token}"}
    with httpx.Client(base_url=kube.url, headers=headers, timeout=30) as client:
        yield client


def assert_status(body: dict[str, Any], code: int, reason: str) -> None:
    assert validate(body, "1.37", schema="status-meta-v1") == []
    assert body["kind"] == "Status" and body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert (body["code"], body["reason"]) == (code, reason)


def test_discovery_and_the_bearer_token(kube: KubeStandIn, raw: httpx.Client) -> None:
    assert raw.get("/version").json()["gitVersion"] == "v1.37.0"
    assert raw.get("/api").json()["versions"] == ["v1"]
    groups = {group["name"] for group in raw.get("/apis").json()["groups"]}
    assert {"networking.k8s.io", "authorization.k8s.io"} <= groups
    anonymous = httpx.get(f"{kube.url}/api/v1/namespaces/{kube.namespace}/pods", timeout=30)
    assert anonymous.status_code == 401
    assert_status(anonymous.json(), 401, "Unauthorized")


async def test_not_found_and_already_exists(kube: KubeStandIn, kube_client: AsyncClient) -> None:
    with pytest.raises(ApiError) as missing:
        await kube_client.get(Pod, "nope")
    assert missing.value.status.code == 404
    assert missing.value.status.reason == "NotFound"
    assert missing.value.status.message == 'pods "nope" not found'
    created = await kube_client.create(as_pod(pod("twice")))
    assert created.metadata is not None and created.metadata.uid
    with pytest.raises(ApiError) as again:
        await kube_client.create(as_pod(pod("twice")))
    assert again.value.status.code == 409
    assert again.value.status.reason == "AlreadyExists"
    await kube_client.delete(Pod, "twice", grace_period=0)


def test_a_namespace_that_does_not_exist(raw: httpx.Client) -> None:
    response = raw.post("/api/v1/namespaces/elsewhere/pods", json=pod("x"))
    assert response.status_code == 404
    assert response.json()["message"] == 'namespaces "elsewhere" not found'


def test_invalid_pods_get_422_with_every_cause(kube: KubeStandIn, raw: httpx.Client) -> None:
    body = pod("Bad_Name")
    container = body["spec"]["containers"][0]
    del container["image"]
    container["name"] = "main"
    container["resources"] = {"limits": {"cpu": ["1"]}}
    body["spec"]["containers"].append(dict(container, image=BUSYBOX))
    body["spec"]["restartPolicy"] = 7
    response = raw.post(f"/api/v1/namespaces/{kube.namespace}/pods", json=body)
    assert response.status_code == 422, response.text
    status = response.json()
    assert_status(status, 422, "Invalid")
    assert status["details"]["kind"] == "Pod" and status["details"]["name"] == "Bad_Name"
    causes = {cause["field"]: cause["reason"] for cause in status["details"]["causes"]}
    assert causes == {
        "metadata.name": "FieldValueInvalid",
        "spec.containers[0].image": "FieldValueRequired",
        "spec.containers[0].resources.limits.cpu": "FieldValueInvalid",
        "spec.containers[1].name": "FieldValueDuplicate",
        "spec.containers[1].resources.limits.cpu": "FieldValueInvalid",
        "spec.restartPolicy": "FieldValueInvalid",
    }
    assert status["message"].startswith('Pod "Bad_Name" is invalid: [')
    listed = raw.get(f"/api/v1/namespaces/{kube.namespace}/pods").json()
    assert listed["items"] == []  # nothing was created


def test_volume_mounts_must_name_a_volume(kube: KubeStandIn, raw: httpx.Client) -> None:
    body = pod("mounts")
    body["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    response = raw.post(f"/api/v1/namespaces/{kube.namespace}/pods", json=body)
    assert response.status_code == 422
    (cause,) = response.json()["details"]["causes"]
    assert cause == {
        "reason": "FieldValueNotFound",
        "message": 'Not found: "data"',
        "field": "spec.containers[0].volumeMounts[0].name",
    }


def test_unknown_fields_follow_field_validation(kube: KubeStandIn, raw: httpx.Client) -> None:
    url = f"/api/v1/namespaces/{kube.namespace}/pods"
    body = pod("unknown", restartPolicyy="Never")
    strict = raw.post(url, params={"fieldValidation": "Strict"}, json=body)
    assert strict.status_code == 400
    assert_status(strict.json(), 400, "BadRequest")
    assert strict.json()["message"] == 'strict decoding error: unknown field "spec.restartPolicyy"'
    warned = raw.post(url, json=body)  # the server's default is Warn
    assert warned.status_code == 201
    assert warned.headers["warning"] == '299 - "unknown field \\"spec.restartPolicyy\\""' or (
        "spec.restartPolicyy" in warned.headers["warning"]
    )
    assert kube.warnings == ['unknown field "spec.restartPolicyy"']
    raw.delete(f"{url}/unknown", params={"gracePeriodSeconds": "0"})


def test_wrong_kind_or_namespace_is_a_bad_request(kube: KubeStandIn, raw: httpx.Client) -> None:
    url = f"/api/v1/namespaces/{kube.namespace}/pods"
    wrong_kind = dict(pod("x"), kind="Service")
    assert raw.post(url, json=wrong_kind).status_code == 400
    other_namespace = pod("x")
    other_namespace["metadata"]["namespace"] = "other"
    response = raw.post(url, json=other_namespace)
    assert response.status_code == 400
    assert "does not match the namespace" in response.json()["message"]
    assert raw.post(url, content=b"{not json").status_code == 400


async def test_rbac_refusals_and_access_reviews(
    kube: KubeStandIn, kube_client: AsyncClient
) -> None:
    from lightkube.resources.authorization_v1 import SelfSubjectAccessReview

    def review(verb: str, resource: str, subresource: str = "") -> SelfSubjectAccessReview:
        attributes = {"namespace": kube.namespace, "verb": verb, "resource": resource}
        if subresource:
            attributes["subresource"] = subresource
        return cast(
            SelfSubjectAccessReview,
            SelfSubjectAccessReview.from_dict(
                {
                    "apiVersion": "authorization.k8s.io/v1",
                    "kind": "SelfSubjectAccessReview",
                    "spec": {"resourceAttributes": attributes},
                }
            ),
        )

    allowed = await kube_client.create(review("create", "pods"))
    assert isinstance(allowed, SelfSubjectAccessReview)
    assert allowed.status is not None and allowed.status.allowed is True
    kube.access.denied.add(("get", "pods/log"))
    kube.access.denied.add(("create", "pods"))
    refused = await kube_client.create(review("get", "pods", "log"))
    assert refused.status is not None and refused.status.allowed is False
    with pytest.raises(ApiError) as forbidden:
        await kube_client.create(as_pod(pod("denied")))
    assert forbidden.value.status.code == 403
    assert forbidden.value.status.reason == "Forbidden"
    assert forbidden.value.status.message == (
        'pods is forbidden: User "system:serviceaccount:jetty-proxy:jetty-proxy" cannot create'
        f' resource "pods" in API group "" in the namespace "{kube.namespace}"'
    )


async def test_label_selectors_on_lists(kube: KubeStandIn, kube_client: AsyncClient) -> None:
    for name, owner in (("a", "one"), ("b", "two"), ("c", "one")):
        body = pod(name)
        body["metadata"]["labels"] = {"jetty-proxy.managed": "true", LABEL_OWNER: owner}
        await kube_client.create(as_pod(body))
    one = [
        str(p.metadata.name)
        async for p in kube_client.list(
            Pod,
            namespace=kube.namespace,
            labels={"jetty-proxy.managed": "true", LABEL_OWNER: "one"},
        )
        if p.metadata is not None
    ]
    assert sorted(one) == ["a", "c"]
    not_two = kube_client.list(Pod, labels={LABEL_OWNER: not_equal("two")})
    assert len([p async for p in not_two]) == 2
    some = kube_client.list(Pod, labels={LABEL_OWNER: in_(["two", "x"])})
    assert len([p async for p in some]) == 1
    for name in ("a", "b", "c"):
        await kube_client.delete(Pod, name, grace_period=0)


async def test_network_policies_create_list_delete(
    kube: KubeStandIn, kube_client: AsyncClient
) -> None:
    spec = SandboxSpec(
        run_id="0a1b2c3d",
        collection="acme",
        image=BUSYBOX,
        argv=["true"],
        labels={LABEL_OWNER: "o", LABEL_SERVER: "s"},
    )
    settings = PodSettings(
        namespace=kube.namespace,
        agents_image=BUSYBOX,
        relay=Peer({"app.kubernetes.io/name": "jetty-proxy"}, 8081, "jetty-proxy"),
    )
    run = PodRun(
        token="t",
        relay_url="http://127.0.0.1:9",
        agent="claude-code",
        deadline_seconds=60,
        suffix="x1",
    )
    policy = sandbox_network_policy(spec, settings, run)
    await kube_client.create(cast(NetworkPolicy, NetworkPolicy.from_dict(policy)))
    listed = [
        p async for p in kube_client.list(NetworkPolicy, labels={"jetty-proxy.run-id": "0a1b2c3d"})
    ]
    assert [p.metadata.name for p in listed if p.metadata] == [policy["metadata"]["name"]]
    await kube_client.delete(NetworkPolicy, policy["metadata"]["name"])
    with pytest.raises(ApiError) as gone:
        await kube_client.get(NetworkPolicy, policy["metadata"]["name"])
    assert gone.value.status.code == 404
    # The sandbox Pod the backend sends is accepted as it is, with nothing unknown in it.
    dry = await kube_client.create(as_pod(sandbox_pod(spec, settings, run)), dry_run=True)
    assert isinstance(dry, Pod)
    assert kube.warnings == []


@pytest.mark.parametrize("version", ["1.30", "1.37"])
def test_the_version_played_picks_the_schemas(
    docker_host: str, tmp_path: Any, version: str
) -> None:
    from tests.support.kube.standin import kube_standin

    with kube_standin(docker_host, tmp_path, version=version) as kube:
        minor = httpx.get(
            f"{kube.url}/version", headers={"Authorization": f"Bearer {kube.token}"}
        ).json()["minor"]
        assert minor == version.split(".")[1]
