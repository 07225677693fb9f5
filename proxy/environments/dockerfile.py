"""The Dockerfile of a package build, generated from data and never from pasted strings.

A build installs ``apt_packages`` and ``pip_packages`` on ``base_image``. The packages are
checked against Debian's and PyPI's name/version grammars first (`check_packages`), and even
then they never become shell text: each ``RUN`` uses the JSON (exec) form, runs a fixed
script, and hands the packages to it as separate argv items (``"$@"``), so no name can be
parsed as shell syntax. The output is deterministic: packages are de-duplicated and sorted,
and the tag is a hash of everything that goes into the build::

    context = render(BuildSpec("debian:bookworm", apt_packages=("python3-pip",)))
    context.tag          # 'jetty-env/build:3f2a…' (16 hex characters)
    context.archive()    # the tar the engine's build API takes

When ``ca_bundle`` is given it is copied into the image and used by apt, pip and uv during the
build: for a TLS-inspecting proxy between the engine and the package registries.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pydantic import TypeAdapter, ValidationError

from proxy.errors import InvalidField
from proxy.jetty.fields import AptPackage, PipRequirement, error_detail
from proxy.jetty.imageref import InvalidImageRef, parse_image_ref

__all__ = [
    "BUILD_REPOSITORY",
    "BuildContext",
    "BuildSpec",
    "check_packages",
    "context_archive",
    "render",
]

BUILD_REPOSITORY = "jetty-env/build"
CA_BUNDLE_NAME = "build-ca.pem"
CA_BUNDLE_PATH = "/etc/jetty-proxy/build-ca.pem"
# Bumped when the generated text changes meaning, so old tags are not reused for new builds.
FORMAT_VERSION = 1

_APT_SCRIPT = (
    "set -eu; "
    "if ! command -v apt-get >/dev/null 2>&1; then "
    "echo 'apt_packages need a Debian or Ubuntu base image (no apt-get found)' >&2; exit 1; fi; "
    "apt-get update; "
    'apt-get install -y --no-install-recommends "$@"; '
    "apt-get clean; rm -rf /var/lib/apt/lists/*"
)
# uv when the base has it (the python312-uv snapshot does), else the base's pip.
_PIP_SCRIPT = (
    "set -eu; "
    'if command -v uv >/dev/null 2>&1; then exec uv pip install --system "$@"; fi; '
    'if python3 -m pip --version >/dev/null 2>&1; then exec python3 -m pip install "$@"; fi; '
    "echo 'pip_packages need Python with pip or uv in the base image"
    " (add python3-pip to apt_packages)' >&2; exit 1"
)
_BUILD_ARGS = (
    ("DEBIAN_FRONTEND", "noninteractive"),
    ("PIP_BREAK_SYSTEM_PACKAGES", "1"),
    ("PIP_NO_CACHE_DIR", "1"),
    ("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
    ("PIP_ROOT_USER_ACTION", "ignore"),
    ("UV_BREAK_SYSTEM_PACKAGES", "1"),
    ("UV_NO_CACHE", "1"),
)
_CA_ARGS = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")

_APT_LIST = TypeAdapter(tuple[AptPackage, ...])
_PIP_LIST = TypeAdapter(tuple[PipRequirement, ...])


@dataclass(frozen=True, slots=True)
class BuildSpec:
    """What a package build installs, and on what."""

    base_image: str
    apt_packages: tuple[str, ...] = ()
    pip_packages: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BuildContext:
    """A build's Dockerfile and the other files of its context, with their content hash."""

    dockerfile: str
    files: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))
    digest: str = ""

    @property
    def tag(self) -> str:
        """The image reference the build is tagged with: same content, same tag."""
        return f"{BUILD_REPOSITORY}:{self.digest[:16]}"

    def archive(self) -> bytes:
        """The build context as an uncompressed tar (``Dockerfile`` first)."""
        return context_archive({"Dockerfile": self.dockerfile.encode(), **self.files})


def check_packages(
    apt_packages: Iterable[str], pip_packages: Iterable[str], *, root: str = "jetty"
) -> None:
    """Raise a 400 naming the first package that does not fit its registry's grammar."""
    for name, values, adapter in (
        ("apt_packages", tuple(apt_packages), _APT_LIST),
        ("pip_packages", tuple(pip_packages), _PIP_LIST),
    ):
        try:
            adapter.validate_python(values)
        except ValidationError as exc:
            error = exc.errors()[0]
            index = error["loc"][0] if error["loc"] else 0
            param = f"{root}.{name}[{index}]"
            raise InvalidField(param, f"Invalid '{param}': {error_detail(error)}") from exc


def render(spec: BuildSpec, *, ca_bundle: bytes | None = None) -> BuildContext:
    """The build context for ``spec``; raises a 400 for a bad base image or package."""
    try:
        parse_image_ref(spec.base_image)
    except InvalidImageRef as exc:
        raise InvalidField("jetty.base_image", f"Invalid base image: {exc}") from exc
    check_packages(spec.apt_packages, spec.pip_packages)
    apt = sorted(set(spec.apt_packages))
    pip = sorted(set(spec.pip_packages))

    lines = [
        "# Generated by jetty-proxy from base_image, apt_packages and pip_packages.",
        f"FROM {spec.base_image}",
    ]
    files: dict[str, bytes] = {}
    build_args = list(_BUILD_ARGS)
    if ca_bundle:
        files[CA_BUNDLE_NAME] = ca_bundle
        lines.append(f"COPY {CA_BUNDLE_NAME} {CA_BUNDLE_PATH}")
        build_args += [(name, CA_BUNDLE_PATH) for name in _CA_ARGS]
    # ARGs, unlike ENVs, reach the RUN steps without staying in the image's configuration.
    lines += [f"ARG {name}={value}" for name, value in build_args]
    if apt:
        lines.append(_run(_APT_SCRIPT, "apt-install", apt))
    if pip:
        lines.append(_run(_PIP_SCRIPT, "pip-install", pip))
    dockerfile = "\n".join(lines) + "\n"
    return BuildContext(dockerfile, MappingProxyType(files), _digest(dockerfile, files))


def context_archive(files: Mapping[str, bytes]) -> bytes:
    """A deterministic tar of ``files`` (names are '/'-separated relative paths)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _run(script: str, name: str, arguments: list[str]) -> str:
    # Exec form: the engine runs this argv as is. The script is fixed; "$@" are the packages.
    return "RUN " + json.dumps(["/bin/sh", "-c", script, name, *arguments])


def _digest(dockerfile: str, files: Mapping[str, bytes]) -> str:
    canonical = json.dumps(
        {
            "format": FORMAT_VERSION,
            "dockerfile": dockerfile,
            "files": {
                name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())
            },
        },
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
