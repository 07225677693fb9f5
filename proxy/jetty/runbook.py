"""Runbooks: Markdown with optional YAML front matter, ``{{var}}`` templates, and URL fetching.

A runbook looks like::

    ---
    version: 1
    agent: claude-code
    snapshot: python312-uv
    primary_outputs: [summary.md]
    secrets:
      GITHUB_TOKEN: {env: GH_TOKEN, description: read access, required: true}
    variables:
      dataset: sales.csv
    ---
    # Analyse {{ dataset }}
    Write your findings to {{results_dir}}/summary.md.

``parse_runbook`` splits and validates it; ``render_template`` fills the placeholders;
``fetch_runbook_url`` downloads one for ``jetty.runbook_url``. Problems are 400s whose ``param``
points at where the runbook came from (``messages`` or ``jetty.runbook_url``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from proxy.errors import InvalidField
from proxy.jetty.fields import (
    Agent,
    AptPackages,
    Cpus,
    EnvName,
    ImageReference,
    MaxTurns,
    MemoryBytes,
    PipPackages,
    Provider,
    ResourceName,
    TemplateValue,
    TemplateVariables,
    TimeoutSec,
    error_detail,
    error_path,
    stringify_scalar,
)

__all__ = [
    "RESULTS_DIR",
    "FrontMatter",
    "Runbook",
    "RunbookUnavailable",
    "SecretDecl",
    "fetch_runbook_url",
    "parse_runbook",
    "render_template",
]

logger = logging.getLogger("proxy.jetty")

RESULTS_DIR = "/app/results"
MAX_FRONT_MATTER_CHARS = 64 * 1024

_FRONT_MATTER = re.compile(
    r"\A\ufeff?---[ \t]*\r?\n(?P<yaml>.*?)^(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.DOTALL | re.M
)
_OPENING_FENCE = re.compile(r"\A\ufeff?---[ \t]*\r?\n")
# Placeholders stay on one line; "{{ a b }}" or "{{#each}}" are not placeholders and are kept.
_PLACEHOLDER = re.compile(r"\{\{[ \t]*([A-Za-z_][A-Za-z0-9_]*)[ \t]*\}\}")


class SecretDecl(BaseModel):
    """A secret the runbook needs, injected as environment variable ``env``.

    In front matter ``env`` may be left out; it then defaults to the secret's own name.
    """

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    env: EnvName
    description: str = ""
    required: bool = True


class FrontMatter(BaseModel):
    """The YAML front matter of a runbook. Unknown keys are kept (``model_extra``), not refused:
    runbooks are shared between tools that each know only some of the keys."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    version: TemplateValue | None = None
    agent: Agent | None = None
    model: str | None = None
    model_provider: Provider | None = None
    snapshot: ResourceName | None = None
    image: ImageReference | None = None
    base_image: ImageReference | None = None
    pip_packages: PipPackages | None = None
    apt_packages: AptPackages | None = None
    primary_outputs: list[str] = Field(default_factory=list)
    secrets: dict[str, SecretDecl] = Field(default_factory=dict)
    evaluation: Any = None
    timeout_sec: TimeoutSec | None = None
    network_enabled: bool | None = None
    cpus: Cpus | None = None
    memory_bytes: MemoryBytes | None = Field(default=None, validation_alias="memory")
    max_turns: MaxTurns | None = None
    variables: TemplateVariables = Field(default_factory=dict)
    """Defaults for template variables; ``jetty.template_variables`` overrides them."""

    @field_validator("primary_outputs", mode="before")
    @classmethod
    def _single_output(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("secrets", mode="before")
    @classmethod
    def _env_defaults_to_name(cls, value: object) -> object:
        if not isinstance(value, dict):
            return value
        filled: dict[object, object] = {}
        for name, decl in value.items():
            decl = {} if decl is None else decl  # "NAME:" alone declares a required secret
            if isinstance(decl, dict) and decl.get("env") is None:
                decl = {**decl, "env": name}
            filled[name] = decl
        return filled

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: object) -> object:
        return value if value is None else stringify_scalar(value)


@dataclass(frozen=True, slots=True)
class Runbook:
    """A runbook split into its validated front matter and its Markdown body."""

    front_matter: FrontMatter
    body: str


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without aliases: a few lines of nested aliases expand to billions of nodes."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
            mark = event.start_mark if isinstance(event.start_mark, yaml.Mark) else None
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", mark)
        return super().compose_node(parent, index)


def parse_runbook(text: str, *, param: str = "messages") -> Runbook:
    """Split ``text`` into front matter and body, validating the front matter.

    Text without a leading ``---`` line has no front matter. Malformed YAML, front matter that
    is not a mapping, or a known key with a bad value raise
    :class:`~proxy.errors.InvalidField` with ``param`` (where the runbook came from).
    """
    match = _FRONT_MATTER.match(text)
    if match is None:
        if _OPENING_FENCE.match(text):
            raise InvalidField(param, "Runbook front matter opens with '---' but never closes")
        return Runbook(front_matter=FrontMatter(), body=text.removeprefix("\ufeff"))
    source = match["yaml"]
    if len(source) > MAX_FRONT_MATTER_CHARS:
        raise InvalidField(param, f"Runbook front matter is over {MAX_FRONT_MATTER_CHARS} chars")
    try:
        data = yaml.load(source, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        problem = _yaml_problem(exc)
        raise InvalidField(param, f"Runbook front matter is not valid YAML: {problem}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidField(param, "Runbook front matter must be a YAML mapping of keys to values")
    try:
        front_matter = FrontMatter.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = error_path(error, "")
        raise InvalidField(
            param, f"Runbook front matter '{field}' is invalid: {error_detail(error)}"
        ) from exc
    return Runbook(front_matter=front_matter, body=text[match.end() :])


def render_template(body: str, variables: Mapping[str, str]) -> str:
    """Fill each ``{{ name }}`` in ``body`` from ``variables`` in one pass.

    ``results_dir`` is ``/app/results`` unless ``variables`` says otherwise. Values are not
    themselves rendered. Raises :class:`~proxy.errors.InvalidField` on
    ``jetty.template_variables`` listing every placeholder that has no value.
    """
    values = {"results_dir": RESULTS_DIR, **variables}
    missing = [name for name in dict.fromkeys(_PLACEHOLDER.findall(body)) if name not in values]
    if missing:
        names = ", ".join(f"'{name}'" for name in missing)
        plural = "s" if len(missing) > 1 else ""
        raise InvalidField(
            "jetty.template_variables",
            f"Runbook needs template variable{plural} {names}; set "
            f"{'them' if plural else 'it'} in jetty.template_variables",
        )
    return _PLACEHOLDER.sub(lambda m: values[m[1]], body)


class RunbookUnavailable(InvalidField):
    """``jetty.runbook_url`` could not be fetched, for whatever reason (the log says which)."""

    code = "runbook_url_unavailable"

    def __init__(self) -> None:
        super().__init__(
            "jetty.runbook_url",
            "The runbook could not be fetched from jetty.runbook_url. This server does not say"
            " why (its log does); it fetches only public http(s) URLs that answer with UTF-8"
            " text in time and within the size limit.",
        )


async def fetch_runbook_url(
    url: str, client: httpx.AsyncClient, max_bytes: int, *, deadline: float = 30.0
) -> str:
    """Download the runbook at ``url`` (http or https only) as text.

    ``client`` decides where requests may go (the server's one refuses internal addresses,
    at every redirect). The body is read as it streams and the download stops as soon as it
    passes ``max_bytes``; the whole fetch, redirects included, must end within ``deadline``
    seconds. Every failure (refused address, connection error, timeout, non-2xx answer, too
    large, not UTF-8) is the same :class:`RunbookUnavailable`: telling them apart would let a
    client probe which hosts and ports the server can reach. The reason goes to the log.
    """
    try:
        with anyio.fail_after(deadline):
            body = await _download(url, client, max_bytes)
        return body.decode("utf-8-sig")
    except (_FetchFailed, httpx.HTTPError, httpx.InvalidURL, TimeoutError, UnicodeError) as exc:
        logger.warning("jetty.runbook_url %s not fetched: %s", _shown(url), _why(exc))
        raise RunbookUnavailable from None


class _FetchFailed(Exception):
    pass


async def _download(url: str, client: httpx.AsyncClient, max_bytes: int) -> bytes:
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise _FetchFailed("not an http(s) URL")
    body = bytearray()
    async with client.stream("GET", parsed, follow_redirects=True) as response:
        if not response.is_success:
            raise _FetchFailed(f"HTTP {response.status_code} from {response.url.host}")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise _FetchFailed(f"content-length {declared} is over {max_bytes} bytes")
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise _FetchFailed(f"more than {max_bytes} bytes")
    return bytes(body)


def _shown(url: str) -> str:
    """``url`` for the log, without credentials, query or fragment (they may hold secrets)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "(not a URL)"
    return str(parsed.copy_with(username=None, password=None, query=None, fragment=None))


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "took too long"
    return f"{type(exc).__name__}: {exc}"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        # +2: marks count from 0, and the opening '---' is the runbook's first line.
        return f"{exc.problem} (line {exc.problem_mark.line + 2})"
    return str(exc)
