"""The image cache on a real engine: what counts as ours, last use, pruning oldest first."""

from __future__ import annotations

import uuid

import pytest

from proxy.environments import Environments
from proxy.environments.cache import (
    LABEL_ENVIRONMENT,
    cached_images,
    prune,
    pulled_marker,
    touch,
)
from proxy.environments.dockerfile import BUILD_REPOSITORY, context_archive
from proxy.jetty.plan import Environment
from tests.environments.conftest import TEST_IMAGE, Said, forget

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

BUSYBOX = "jetty-test/busybox:latest"


async def _fake_build(environments: Environments, name: str) -> str:
    """A tiny labelled image, cached like a package build (busybox plus one file)."""
    tag = f"{BUILD_REPOSITORY}:test-{name}"
    dockerfile = f"FROM {BUSYBOX}\nCOPY marker /marker\n"
    archive = context_archive({"Dockerfile": dockerfile.encode(), "marker": name.encode()})
    return await environments.engine.build(
        archive, tag=tag, labels={LABEL_ENVIRONMENT: "build"}, progress=Said()
    )


async def test_prune_removes_the_least_recently_used_of_ours_only(
    environments: Environments, registry: str, docker_host: str
) -> None:
    engine = environments.engine
    await prune(engine, 0)  # start from an empty cache
    assert await cached_images(engine) == []

    older = await _fake_build(environments, f"older-{uuid.uuid4().hex[:6]}")
    newer = await _fake_build(environments, f"newer-{uuid.uuid4().hex[:6]}")
    pulled_ref = f"{registry}/acme/env:v1"
    await forget(docker_host, pulled_ref)
    pulled = await environments.resolve(Environment("image", pulled_ref), progress=Said())
    assert pulled.pulled
    # Using the older build again makes the newer one the least recently used build.
    older_tag = next(t for t in (await engine.inspect(older) or {})["RepoTags"])
    await touch(engine, older, older_tag)

    cached = await cached_images(engine)
    assert [image.image_id for image in cached] == [newer, pulled.image_id, older]
    kinds = {image.image_id: image for image in cached}
    assert kinds[pulled.image_id].kind == "pulled"
    assert kinds[pulled.image_id].references == (pulled_ref, pulled_marker(pulled_ref))
    assert kinds[older].kind == "build"

    total = sum(image.size for image in cached)
    removed = await prune(engine, total - 1)
    assert [image.image_id for image in removed] == [newer]
    assert await engine.inspect(newer) is None

    removed = await prune(engine, 0, keep=frozenset({older}))
    assert [image.image_id for image in removed] == [pulled.image_id]
    assert await engine.inspect(pulled_ref) is None
    assert await engine.inspect(older) is not None
    # Never anything that was not built or pulled here.
    assert await engine.inspect(TEST_IMAGE) is not None
    assert await engine.inspect(BUSYBOX) is not None
    await prune(engine, 0)
    assert await engine.inspect(older) is None


async def test_an_image_that_was_already_there_is_never_marked_as_pulled(
    environments: Environments,
) -> None:
    resolved = await environments.resolve(Environment("image", TEST_IMAGE), progress=Said())
    assert not resolved.pulled
    info = await environments.engine.inspect(TEST_IMAGE)
    assert info is not None
    assert pulled_marker(TEST_IMAGE) not in info["RepoTags"]
    assert resolved.image_id not in {i.image_id for i in await cached_images(environments.engine)}


async def test_the_size_limit_prunes_after_a_pull(
    environments: Environments, registry: str, docker_host: str
) -> None:
    stale = await _fake_build(environments, f"stale-{uuid.uuid4().hex[:6]}")
    reference = f"{registry}/acme/env:v1"
    await forget(docker_host, reference)
    environments.max_bytes = 1  # smaller than anything: all but the image just pulled goes
    resolved = await environments.resolve(Environment("image", reference), progress=Said())
    assert await environments.engine.inspect(stale) is None
    assert await environments.engine.inspect(resolved.image_id) is not None
