"""Container image references, checked against the Docker reference grammar.

The grammar is the one the ``distribution/reference`` package implements (and Docker, Podman and
every registry client follow)::

    reference       := name [ ":" tag ] [ "@" digest ]
    name            := [ domain "/" ] path-component [ "/" path-component ]*
    domain          := host [ ":" port-number ]
    host            := domain-name | "[" IPv6address "]"
    domain-name     := domain-component [ "." domain-component ]*
    domain-component:= /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
    port-number     := /[0-9]+/
    path-component  := alpha-numeric [ separator alpha-numeric ]*
    alpha-numeric   := /[a-z0-9]+/
    separator       := /[_.]|__|[-]+/
    tag             := /[\\w][\\w.-]{0,127}/
    digest          := algorithm ":" hex   (sha256: 64, sha384: 96, sha512: 128 lowercase hex)

The name is at most 255 characters. The first path component is the registry only when it
contains ``.`` or ``:`` or is ``localhost``; otherwise the reference names a repository on the
default registry (``ubuntu``, ``library/ubuntu``), and that path must be lowercase. Docker
releases disagree on a first component with an uppercase letter (``UPPER/case``): older engines
refuse it as an uppercase repository, newer ones try to reach a registry called ``UPPER``; it is
refused here, so that no engine is ever asked.

:func:`check_registry` applies a server's list of allowed registries (``docker.io`` stands for the
default registry).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["DEFAULT_REGISTRY", "ImageRef", "InvalidImageRef", "check_registry", "parse_image_ref"]

NAME_MAX_LENGTH = 255
#: What a reference that names no registry pulls from (Docker Hub, for Docker).
DEFAULT_REGISTRY = "docker.io"
# Longest possible reference: a full name, a full tag and a sha512 digest. Checked before the
# regex runs so that a long hostile string cannot make it backtrack for long.
_MAX_REFERENCE_LENGTH = NAME_MAX_LENGTH + 1 + 128 + 1 + len("sha512:") + 128

_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALPHANUMERIC}(?:{_SEPARATOR}{_ALPHANUMERIC})*"
_REMOTE_NAME = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

# re.ASCII: Go's \w is ASCII-only; Python's would otherwise accept any Unicode letter in tags.
_REFERENCE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_REMOTE_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?",
    re.ASCII,
)
_DOMAIN_ONLY = re.compile(_DOMAIN, re.ASCII)
_REMOTE_ONLY = re.compile(_REMOTE_NAME, re.ASCII)
_HEX_ID = re.compile(r"[a-f0-9]{64}")
_STRAY_CHARACTER = re.compile(r"[^A-Za-z0-9._:/@\[\]-]")

# The algorithms go-digest accepts, with the number of lowercase hex characters each requires.
_DIGEST_LENGTHS = MappingProxyType({"sha256": 64, "sha384": 96, "sha512": 128})
_LOWER_HEX = re.compile(r"[a-f0-9]+")


class InvalidImageRef(ValueError):
    """The string is not a valid image reference; the message says why."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A parsed image reference.

    ``registry`` is ``None`` when the reference names no registry (the engine's default, Docker
    Hub for Docker). ``repository`` is the path on the registry, as written (``ubuntu`` stays
    ``ubuntu``; it is not expanded to ``library/ubuntu``).
    """

    registry: str | None
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def registry_host(self) -> str:
        """The registry, lowercase, with :data:`DEFAULT_REGISTRY` when none is named."""
        return (self.registry or DEFAULT_REGISTRY).lower()

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}" if self.registry else self.repository
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_image_ref(text: str) -> ImageRef:
    """Parse ``text`` as ``[registry/]repository[:tag][@digest]``.

    Raises :class:`InvalidImageRef` with a human-readable reason when ``text`` is not a valid
    reference.
    """
    if not text:
        raise InvalidImageRef("an image reference cannot be empty")
    if len(text) > _MAX_REFERENCE_LENGTH:
        raise InvalidImageRef("the image reference is too long")
    if _HEX_ID.fullmatch(text):
        raise InvalidImageRef("a 64-character hex string is an image ID, not a reference")
    match = _REFERENCE.fullmatch(text)
    if match is None:
        raise InvalidImageRef(_explain(text))
    name, tag, digest = match["name"], match["tag"], match["digest"]
    if len(name) > NAME_MAX_LENGTH:
        raise InvalidImageRef(f"the repository name is longer than {NAME_MAX_LENGTH} characters")
    if digest is not None:
        _check_digest(digest)
    registry, repository = _split_registry(name)
    return ImageRef(registry=registry, repository=repository, tag=tag, digest=digest)


def _split_registry(name: str) -> tuple[str | None, str]:
    first, slash, rest = name.partition("/")
    if not slash:
        return None, name
    if "." in first or ":" in first or first == "localhost":
        # The grammar would also accept e.g. "a_b.c/x" as a two-component path; Docker would
        # then try to reach a registry called "a_b.c", so refuse it here instead.
        if not _DOMAIN_ONLY.fullmatch(first) or not _REMOTE_ONLY.fullmatch(rest):
            raise InvalidImageRef(f"{first!r} is not a valid registry host")
        return first, rest
    if not _REMOTE_ONLY.fullmatch(name):
        raise InvalidImageRef("the repository name must be lowercase")
    return None, name


def check_registry(ref: ImageRef, allowed: Collection[str]) -> None:
    """Raise :class:`InvalidImageRef` unless ``ref`` comes from one of ``allowed``.

    Entries are registry hosts as written in references (``ghcr.io``, ``localhost:5000``),
    compared without regard to case; ``docker.io`` is the default registry. An empty
    ``allowed`` allows every registry.
    """
    if not allowed:
        return
    if ref.registry_host not in {entry.lower() for entry in allowed}:
        names = ", ".join(sorted(allowed))
        raise InvalidImageRef(
            f"registry {ref.registry_host!r} is not allowed on this server (allowed: {names})"
        )


def _check_digest(digest: str) -> None:
    algorithm, _, encoded = digest.partition(":")
    length = _DIGEST_LENGTHS.get(algorithm)
    if length is None:
        known = ", ".join(_DIGEST_LENGTHS)
        raise InvalidImageRef(f"unsupported digest algorithm {algorithm!r} (use one of {known})")
    if len(encoded) != length or not _LOWER_HEX.fullmatch(encoded):
        raise InvalidImageRef(f"a {algorithm} digest must be {length} lowercase hex characters")


def _explain(text: str) -> str:
    """The most likely reason ``text`` failed the grammar, for the error message."""
    stray = _STRAY_CHARACTER.search(text)
    if stray is not None:
        return f"{stray[0]!r} cannot appear in an image reference"
    rest, _, digest = text.partition("@")
    if "@" in text and not re.fullmatch(_DIGEST, digest, re.ASCII):
        return "the digest must look like 'sha256:<64 hex characters>'"
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > last_slash:
        tag = rest[colon + 1 :]
        if len(tag) > 128:
            return "the tag is longer than 128 characters"
        if not re.fullmatch(_TAG, tag, re.ASCII):
            return "the tag may only hold letters, digits, '_', '.' and '-' (not first)"
        rest = rest[:colon]
    if "//" in rest or rest.startswith("/") or rest.endswith("/"):
        return "the repository name has an empty path component"
    path = rest.split("/", 1)[1] if "/" in rest else rest
    if path.lower() != path:
        return "the repository name must be lowercase"
    return (
        "not a valid image reference; expected [registry[:port]/]repository[:tag][@digest] "
        "with a lowercase repository of letters, digits and single separators ('.', '_', '-')"
    )
