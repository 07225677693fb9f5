"""The snapshot catalog from built-ins and settings, and the cheap checks before a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.environments import Catalog, SnapshotNotBuilt, UnknownSnapshot, check_environment
from proxy.environments.catalog import BUILTIN_SNAPSHOTS, default_snapshots_dir
from proxy.errors import InvalidField
from proxy.jetty.plan import Environment
from proxy.settings import Settings, SnapshotSettings, load_settings


def test_builtins_ship_with_dockerfiles_and_python312_uv_is_the_default() -> None:
    catalog = Catalog.from_settings(Settings())
    assert catalog.names == list(BUILTIN_SNAPSHOTS) == ["python312-uv", "prism-playwright"]
    assert catalog.default == "python312-uv"
    for snapshot in catalog:
        assert snapshot.dockerfile is not None
        assert snapshot.dockerfile.is_file(), snapshot.dockerfile
        assert snapshot.dockerfile.parent.parent == default_snapshots_dir()
    assert catalog.get("prism-playwright").base_snapshot == "python312-uv"


def test_an_explicit_default_image_replaces_the_builtin_default_snapshot() -> None:
    assert Catalog.from_settings(Settings(default_image="debian:bookworm")).default is None
    both = Settings(default_image="debian:bookworm", default_snapshot="python312-uv")
    assert Catalog.from_settings(both).default == "python312-uv"
    assert Catalog.from_settings(Settings(default_snapshot=None)).default is None


def test_toml_tables_add_snapshots_and_change_builtins(tmp_path: Path) -> None:
    config = tmp_path / "jetty.toml"
    config.write_text(
        """
[snapshots.python312-uv]
build_args = { BASE_IMAGE = "jetty-env/debian:bookworm" }

[snapshots.data-science]
image = "127.0.0.1:5000/acme/ds:v3"
description = "numpy and pandas"
includes = ["numpy", "pandas"]
"""
    )
    catalog = Catalog.from_settings(load_settings(config))
    python = catalog.get("python312-uv")
    assert python.image == "jetty-env/python312-uv:latest"
    assert dict(python.build_args) == {"BASE_IMAGE": "jetty-env/debian:bookworm"}
    extra = catalog.get("data-science")
    assert (extra.image, extra.includes, extra.dockerfile) == (
        "127.0.0.1:5000/acme/ds:v3",
        ("numpy", "pandas"),
        None,
    )
    assert catalog.names[-1] == "data-science"


@pytest.mark.parametrize(
    ("snapshots", "default", "error"),
    [
        ({"x": SnapshotSettings(description="no image")}, None, "needs an image"),
        ({"x": SnapshotSettings(image="Not A Ref")}, None, "bad image"),
        ({"x": SnapshotSettings(image="a/b:1", base_snapshot="nope")}, None, "unknown snapshot"),
        ({}, "nope", "not in the catalog"),
    ],
)
def test_bad_entries_fail_when_the_catalog_is_made(
    snapshots: dict[str, SnapshotSettings], default: str | None, error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        Catalog.from_settings(Settings(snapshots=snapshots, default_snapshot=default))


def test_build_order_puts_bases_first_once() -> None:
    catalog = Catalog.from_settings(Settings())
    names = [s.name for s in catalog.build_order(["prism-playwright", "python312-uv"])]
    assert names == ["python312-uv", "prism-playwright"]
    assert [s.name for s in catalog.build_order([])] == ["python312-uv", "prism-playwright"]


def test_check_environment_refuses_what_no_engine_could_fix() -> None:
    catalog = Catalog.from_settings(Settings())
    with pytest.raises(UnknownSnapshot) as unknown:
        check_environment(Environment("snapshot", "python311"), catalog)
    assert unknown.value.status_code == 400
    assert unknown.value.param == "jetty.snapshot"
    assert "python312-uv, prism-playwright" in unknown.value.message
    with pytest.raises(InvalidField) as bad:
        check_environment(Environment("build", None, None, ("ok", "not;ok")), catalog)
    assert bad.value.param == "jetty.pip_packages[1]"
    check_environment(Environment("snapshot", "python312-uv"), catalog)
    check_environment(Environment("image", "127.0.0.1:5000/acme/env:v1"), catalog)
    check_environment(Environment("build", None, None, ("six",), ("python3-yaml",)), catalog)
    check_environment(Environment("default"), catalog)


def test_without_a_default_an_environment_must_be_named() -> None:
    catalog = Catalog.from_settings(Settings(default_snapshot=None))
    with pytest.raises(InvalidField) as none:
        check_environment(Environment("default"), catalog)
    assert none.value.param == "jetty.image"
    with pytest.raises(InvalidField) as no_base:
        check_environment(Environment("build", None, None, ("six",)), catalog)
    assert no_base.value.param == "jetty.base_image"


def test_unbuilt_snapshot_errors_say_how_to_get_the_image() -> None:
    buildable = SnapshotNotBuilt("python312-uv", "jetty-env/python312-uv:latest", buildable=True)
    assert "jetty-proxy snapshots build python312-uv" in buildable.message
    assert buildable.status_code == 503
    other = SnapshotNotBuilt("ds", "acme/ds:v3", buildable=False)
    assert "load or pull acme/ds:v3" in other.message
