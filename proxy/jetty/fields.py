"""Value types shared by the request's ``jetty`` block and a runbook's front matter.

Each is an ``Annotated`` pydantic type. Their checks raise ``ValueError`` with a message that
describes the value, not the field; :func:`error_path` and :func:`error_detail` turn a pydantic
error into a dotted field path and a readable sentence, so each caller can name the field the
way its client sees it.

Package names are checked against their registries' grammars so that nothing a client sends can
become a shell word of its own: no spaces, quotes, ``;``, ``$``, backticks or leading ``-``.
Some legitimate specifiers still hold ``<``, ``>`` or ``*``, so whoever writes them into a shell
command must still quote each one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from types import MappingProxyType
from typing import Annotated, Literal, get_args
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_core import ErrorDetails

from proxy.agents import agent_names
from proxy.jetty.imageref import InvalidImageRef, parse_image_ref

ProviderName = Literal["anthropic", "openai", "google", "openrouter", "bedrock"]
ToolActivityMode = Literal["reasoning", "content", "none"]

MAX_PACKAGES = 200
MAX_PATHS = 500
MAX_TEMPLATE_VARIABLES = 200
MAX_TEMPLATE_VALUE_CHARS = 64 * 1024
MAX_STORAGE_PATH_CHARS = 1024
MAX_URL_CHARS = 2048
# Docker refuses containers with less than 6 MiB; more than 1 TiB is certainly a typo.
MIN_MEMORY_BYTES = 6 * 1024**2
MAX_MEMORY_BYTES = 1024**4

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_FILE_ID = re.compile(r"file-[A-Za-z0-9_-]{1,128}")
_PIP_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_PIP_VERSION = r"(?:[0-9]+!)?[A-Za-z0-9]+(?:[.+-][A-Za-z0-9]+)*(?:\.\*)?"
_PIP_SPECIFIER = rf"(?:===|==|!=|~=|>=|<=|>|<){_PIP_VERSION}"
_PIP_REQUIREMENT = re.compile(
    rf"{_PIP_NAME}(?:\[{_PIP_NAME}(?:,{_PIP_NAME})*\])?(?:{_PIP_SPECIFIER}(?:,{_PIP_SPECIFIER})*)?",
    re.ASCII,
)
# Debian policy: package names are lowercase alphanumerics plus + - . (at least two characters);
# versions are [epoch:]upstream[-revision] and start with a digit.
_APT_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+(?:=[0-9][A-Za-z0-9.+~:-]*)?", re.ASCII)
# Digits are bounded so that the float below stays finite (int(inf) would raise OverflowError).
_MEMORY = re.compile(
    r"([0-9]{1,15}(?:\.[0-9]{1,9})?)\s*([kmgt]?)(?:i?b)?", re.ASCII | re.IGNORECASE
)
_MEMORY_UNITS = MappingProxyType({"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4})


def _shown(value: str) -> str:
    """``value`` quoted for an error message, shortened so a huge value cannot flood the reply."""
    return repr(value if len(value) <= 80 else value[:77] + "...")


def _matching(pattern: re.Pattern[str], description: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"{_shown(value)} {description}")
        return value

    return AfterValidator(check)


def _one_of(kind: str, choices: Sequence[str]) -> BeforeValidator:
    """A friendlier message than pydantic's for a string outside a ``Literal``."""

    def check(value: object) -> object:
        if isinstance(value, str) and value not in choices:
            raise ValueError(f"unknown {kind} {_shown(value)}; known: {', '.join(choices)}")
        return value

    return BeforeValidator(check)


def _check_image(value: str) -> str:
    try:
        parse_image_ref(value)
    except InvalidImageRef as exc:
        raise ValueError(f"{_shown(value)} is not a valid image reference: {exc}") from None
    return value


def _check_storage_path(value: str) -> str:
    if not value:
        raise ValueError("a storage path cannot be empty")
    if len(value) > MAX_STORAGE_PATH_CHARS:
        raise ValueError(f"a storage path is at most {MAX_STORAGE_PATH_CHARS} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError("a storage path cannot hold NUL or other control characters")
    if "\\" in value:
        raise ValueError(f"{_shown(value)} holds a backslash; storage paths use '/'")
    if value.startswith("/"):
        raise ValueError(f"{_shown(value)} is absolute; storage paths are relative")
    segments = value.split("/")
    if ".." in segments:
        raise ValueError(f"{_shown(value)} climbs out with '..'")
    if any(segment in ("", ".") for segment in segments):
        raise ValueError(f"{_shown(value)} has an empty or '.' path segment")
    return value


def _check_runbook_url(value: str) -> str:
    if len(value) > MAX_URL_CHARS:
        raise ValueError(f"a runbook URL is at most {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise ValueError(f"{_shown(value)} is not a URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("the runbook URL must be an http:// or https:// URL with a host")
    return value


def parse_memory(value: object) -> object:
    """Bytes from ``"512m"``, ``"8G"``, ``"1.5g"``, ``"2GiB"`` or an int of bytes.

    Units are binary, as Docker reads them (``1k`` is 1024 bytes). Anything else is passed on
    unchanged, for the ``int`` check that follows to reject.
    """
    if isinstance(value, str):
        match = _MEMORY.fullmatch(value.strip())
        if match is None:
            raise ValueError(
                f"{_shown(value)} is not a memory size; use e.g. '512m', '8G' or bytes"
            )
        value = int(float(match[1]) * _MEMORY_UNITS[match[2].lower()])
    if isinstance(value, bool) or not isinstance(value, int):
        return value
    if not MIN_MEMORY_BYTES <= value <= MAX_MEMORY_BYTES:
        raise ValueError("memory must be between 6 MiB and 1 TiB")
    return value


def stringify_scalar(value: object) -> object:
    """Numbers and booleans as the strings a template would show (``true``, ``3``, ``0.5``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value
    raise ValueError("must be a string, number or boolean")


Agent = Annotated[str, _one_of("agent", agent_names())]
Provider = Annotated[ProviderName, _one_of("model_provider", get_args(ProviderName))]
ToolActivity = Annotated[ToolActivityMode, _one_of("tool_activity", get_args(ToolActivityMode))]
ResourceName = Annotated[
    str,
    _matching(
        _NAME, "is not a valid name (1-64 letters, digits, '.', '_', '-'; alphanumeric first)"
    ),
]
ImageReference = Annotated[str, AfterValidator(_check_image)]
PipRequirement = Annotated[
    str, _matching(_PIP_REQUIREMENT, "is not a PyPI package name with an optional version")
]
AptPackage = Annotated[
    str, _matching(_APT_PACKAGE, "is not a Debian package name with an optional =version")
]
StoragePath = Annotated[str, AfterValidator(_check_storage_path)]
FileId = Annotated[str, _matching(_FILE_ID, "is not a file id ('file-…')")]
VariableName = Annotated[
    str, _matching(_VARIABLE, "is not a valid variable name (letters, digits and '_')")
]
EnvName = Annotated[str, _matching(_ENV_NAME, "is not a valid environment variable name")]
TemplateValue = Annotated[
    str, BeforeValidator(stringify_scalar), Field(max_length=MAX_TEMPLATE_VALUE_CHARS)
]
TemplateVariables = Annotated[
    dict[VariableName, TemplateValue], Field(max_length=MAX_TEMPLATE_VARIABLES)
]
RunbookUrl = Annotated[str, AfterValidator(_check_runbook_url)]
TimeoutSec = Annotated[int, Field(ge=1, le=86_400)]
Cpus = Annotated[float, Field(gt=0, le=64)]
MemoryBytes = Annotated[int, BeforeValidator(parse_memory)]
MaxTurns = Annotated[int, Field(ge=1, le=10_000)]
PipPackages = Annotated[list[PipRequirement], Field(max_length=MAX_PACKAGES)]
AptPackages = Annotated[list[AptPackage], Field(max_length=MAX_PACKAGES)]


def error_path(error: ErrorDetails, root: str) -> str:
    """The field a pydantic error is about, dotted under ``root``.

    ``("pip_packages", 2)`` under ``"jetty"`` is ``jetty.pip_packages[2]``; with an empty
    ``root`` it is ``pip_packages[2]``.
    """
    path = root
    for part in error["loc"]:
        if part == "[key]":
            continue
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def error_detail(error: ErrorDetails) -> str:
    """What is wrong, without pydantic's "Value error, " prefix on our own checks' messages."""
    ctx = error.get("ctx") or {}
    if error["type"] == "value_error" and "error" in ctx:
        return str(ctx["error"])
    return error["msg"]
