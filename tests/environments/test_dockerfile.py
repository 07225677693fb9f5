"""The generated Dockerfile: deterministic, content-addressed, and no shell text from requests."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from proxy.environments.dockerfile import (
    BUILD_REPOSITORY,
    CA_BUNDLE_PATH,
    BuildSpec,
    check_packages,
    context_archive,
    render,
)
from proxy.errors import InvalidField

BASE = "127.0.0.1:5000/jetty/testenv:bookworm"


def _runs(dockerfile: str) -> list[list[str]]:
    return [json.loads(line[4:]) for line in dockerfile.splitlines() if line.startswith("RUN ")]


def test_packages_are_argv_items_of_a_fixed_script() -> None:
    context = render(BuildSpec(BASE, ("python3-yaml", "curl=7.88.1-10"), ("six==1.16.0",)))
    assert context.dockerfile.splitlines()[1] == f"FROM {BASE}"
    apt, pip = _runs(context.dockerfile)
    assert apt[:2] == ["/bin/sh", "-c"]
    assert apt[3:] == ["apt-install", "curl=7.88.1-10", "python3-yaml"]
    assert '"$@"' in apt[2]
    assert "python3-yaml" not in apt[2]
    assert pip[3:] == ["pip-install", "six==1.16.0"]
    assert "six" not in pip[2]


def test_same_content_same_tag_whatever_the_order() -> None:
    one = render(BuildSpec(BASE, ("b-pkg", "a-pkg", "a-pkg"), ("zeta", "alpha")))
    two = render(BuildSpec(BASE, ("a-pkg", "b-pkg"), ("alpha", "zeta")))
    assert one.dockerfile == two.dockerfile
    assert one.tag == two.tag
    assert one.tag.startswith(f"{BUILD_REPOSITORY}:")
    assert len(one.tag.rsplit(":", 1)[1]) == 16


@pytest.mark.parametrize(
    "other",
    [
        BuildSpec("127.0.0.1:5000/jetty/testenv:trixie", ("a-pkg",)),
        BuildSpec(BASE, ("a-pkg", "b-pkg")),
        BuildSpec(BASE, ("a-pkg",), ("six",)),
        BuildSpec(BASE, (), ("a-pkg",)),
    ],
)
def test_any_change_changes_the_tag(other: BuildSpec) -> None:
    assert render(other).tag != render(BuildSpec(BASE, ("a-pkg",))).tag


def test_a_ca_bundle_is_copied_in_used_by_the_installers_and_hashed() -> None:
    plain = render(BuildSpec(BASE, (), ("six",)))
    with_ca = render(BuildSpec(BASE, (), ("six",)), ca_bundle=b"-----BEGIN CERTIFICATE-----\n")
    other_ca = render(BuildSpec(BASE, (), ("six",)), ca_bundle=b"another bundle\n")
    assert "COPY" not in plain.dockerfile
    assert f"ARG PIP_CERT={CA_BUNDLE_PATH}" in with_ca.dockerfile
    assert f"ARG SSL_CERT_FILE={CA_BUNDLE_PATH}" in with_ca.dockerfile
    assert len({plain.tag, with_ca.tag, other_ca.tag}) == 3
    with tarfile.open(fileobj=io.BytesIO(with_ca.archive())) as tar:
        assert tar.getnames() == ["Dockerfile", "build-ca.pem"]
        member = tar.extractfile("Dockerfile")
        assert member is not None
        assert member.read().decode() == with_ca.dockerfile


def test_the_archive_is_deterministic() -> None:
    files = {"Dockerfile": b"FROM x\n", "sub/file.txt": b"data"}
    assert context_archive(files) == context_archive(dict(files))


@pytest.mark.parametrize(
    ("apt", "pip", "param"),
    [
        (("curl; rm -rf /",), (), "jetty.apt_packages[0]"),
        (("ok-pkg", "$(reboot)"), (), "jetty.apt_packages[1]"),
        (("-o=APT::Get::Foo=1",), (), "jetty.apt_packages[0]"),
        (("Upper",), (), "jetty.apt_packages[0]"),
        ((), ("six==1.16.0 --index-url=http://evil",), "jetty.pip_packages[0]"),
        ((), ("requests", "`id`"), "jetty.pip_packages[1]"),
        ((), ("--extra-index-url=x",), "jetty.pip_packages[0]"),
        ((), ("pkg @ https://example.com/x.whl",), "jetty.pip_packages[0]"),
        ((), ("pkg\nRUN id",), "jetty.pip_packages[0]"),
    ],
)
def test_bad_packages_are_400s_before_any_text_is_made(
    apt: tuple[str, ...], pip: tuple[str, ...], param: str
) -> None:
    with pytest.raises(InvalidField) as caught:
        render(BuildSpec(BASE, apt, pip))
    assert caught.value.param == param
    assert caught.value.status_code == 400


def test_good_packages_pass() -> None:
    check_packages(
        ["python3-yaml", "libc6=2.36-9+deb12u4", "g++"],
        ["six", "requests[socks]>=2.31,<3", "numpy==2.*", "Django~=5.0"],
    )


def test_a_bad_base_image_is_a_400() -> None:
    with pytest.raises(InvalidField) as caught:
        render(BuildSpec("debian:bookworm\nRUN id"))
    assert caught.value.param == "jetty.base_image"
