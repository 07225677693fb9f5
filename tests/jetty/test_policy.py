"""What the server lets a run ask for: network, CPUs and memory, image registries."""

from __future__ import annotations

import pytest

from proxy.errors import InvalidField
from proxy.jetty.policy import (
    NetworkDenied,
    NetworkPolicy,
    check_image_registry,
    check_resources,
)


@pytest.mark.parametrize(
    ("default", "collections", "collection", "allowed"),
    [
        ("denied", {}, "acme", False),
        ("allowed", {}, "acme", True),
        ("denied", {"acme": "allowed"}, "acme", True),
        ("denied", {"acme": "allowed"}, "other", False),
        ("allowed", {"acme": "denied"}, "acme", False),
        ("allowed", {"acme": "denied"}, "other", True),
    ],
)
def test_a_collection_rule_replaces_the_servers(
    default: str, collections: dict[str, str], collection: str, allowed: bool
) -> None:
    policy = NetworkPolicy(default, collections)  # type: ignore[arg-type]
    assert policy.access(collection) == ("allowed" if allowed else "denied")
    policy.check(False, collection)  # no network asked: never refused
    if allowed:
        policy.check(True, collection)
        return
    with pytest.raises(NetworkDenied) as caught:
        policy.check(True, collection)
    error = caught.value
    assert (error.status_code, error.param, error.code) == (
        403,
        "jetty.network_enabled",
        "network_not_allowed",
    )
    assert f"[collections.{collection}]" in error.message


def test_the_default_policy_denies() -> None:
    with pytest.raises(NetworkDenied):
        NetworkPolicy().check(True, "acme")


def _check(cpus: float | None, memory: int | None, *, capped: bool = True) -> None:
    check_resources(
        cpus,
        memory,
        cpus_max=4.0 if capped else None,
        memory_max_bytes=8 * 1024**3 if capped else None,
        cpus_param="jetty.cpus",
        memory_param="messages",
    )


def test_resources_over_the_maximum_name_their_field() -> None:
    _check(4.0, 8 * 1024**3)
    _check(None, None)
    _check(64.0, 1024**4, capped=False)
    with pytest.raises(InvalidField, match=r"cpus 4\.5 is over this server's maximum of 4") as cpus:
        _check(4.5, None)
    assert cpus.value.param == "jetty.cpus"
    with pytest.raises(InvalidField, match=r"memory 9 GiB is over .* of 8 GiB") as memory:
        _check(None, 9 * 1024**3)
    assert memory.value.param == "messages"


@pytest.mark.parametrize(
    ("image", "allowed", "ok"),
    [
        ("ubuntu:24.04", [], True),
        ("ubuntu:24.04", ["docker.io"], True),
        ("library/ubuntu", ["ghcr.io"], False),
        ("ghcr.io/acme/env:v1", ["ghcr.io"], True),
        ("GHCR.IO/acme/env:v1", ["ghcr.io"], True),
        ("localhost:5000/acme/env", ["localhost:5000"], True),
        ("localhost:5001/acme/env", ["localhost:5000"], False),
        ("127.0.0.1:5000/acme/env", ["localhost:5000"], False),
        (None, ["ghcr.io"], True),
    ],
)
def test_image_registry_allow_list(image: str | None, allowed: list[str], ok: bool) -> None:
    if ok:
        check_image_registry(image, allowed, param="jetty.image")
        return
    with pytest.raises(InvalidField, match="is not allowed on this server") as caught:
        check_image_registry(image, allowed, param="jetty.image")
    assert caught.value.param == "jetty.image"
