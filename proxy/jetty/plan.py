"""Resolve a runbook-mode request into a :class:`RunPlan`: everything a run needs, decided.

Each setting comes from the first place that has it: the request's ``jetty`` block, then the
runbook's front matter, then the server's :class:`PlanDefaults`. The environment is chosen as
one unit, so a request's ``image`` replaces a runbook's ``snapshot`` rather than losing to it::

    source   = the first of (request, front matter) that sets snapshot, image or base_image
    priority = snapshot > image > build (base_image + pip_packages/apt_packages) > default

Settings that lose to a higher-priority one are kept in ``RunPlan.warnings`` for the stream,
never dropped silently. Every problem found here is a 400 raised before anything starts.
Resolution is pure: the caller fetches ``jetty.runbook_url`` and the collection's secrets first::

    block = parse_jetty_block(body["jetty"])
    text = await fetch_runbook_url(...) if block.runbook_url else system_text(messages)
    plan = resolve_plan(model, messages, block, text, defaults, secrets)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeVar

from proxy.agents import UnknownAgentError, get_adapter, infer_agent
from proxy.agents.base import RelayApi
from proxy.chatui.attachments import ATTACHMENT_PARTS
from proxy.errors import InvalidField
from proxy.jetty.fields import ToolActivityMode
from proxy.jetty.imageref import check_registry, parse_image_ref
from proxy.jetty.policy import NetworkPolicy, check_image_registry, check_resources
from proxy.jetty.runbook import FrontMatter, parse_runbook, render_template
from proxy.jetty.schema import JettyBlock

__all__ = [
    "API_PROVIDERS",
    "DEFAULT_INSTRUCTION",
    "PROVIDER_SECRETS",
    "PROVIDER_SECRET_NAMES",
    "Environment",
    "PlanDefaults",
    "ProviderSecretNames",
    "RunPlan",
    "agent_providers",
    "resolve_plan",
    "system_text",
]

DEFAULT_INSTRUCTION = "Execute the runbook."

# The providers that serve each model API (see AgentAdapter.relay_api), the default first:
# an agent can use those of the API it speaks.
API_PROVIDERS: Mapping[RelayApi, tuple[str, ...]] = MappingProxyType(
    {
        "anthropic": ("anthropic", "openrouter", "bedrock"),
        "openai": ("openai", "openrouter"),
        "google": ("google",),
    }
)


def agent_providers(agent: str) -> tuple[str, ...]:
    """The model providers ``agent`` can use, its default first (none for an unknown agent)."""
    try:
        return API_PROVIDERS[get_adapter(agent).relay_api]
    except UnknownAgentError:
        return ()


@dataclass(frozen=True, slots=True)
class ProviderSecretNames:
    """The collection secrets that hold one model provider's key and (optional) base URL.

    ``keys`` are tried in order; the first the collection defines is the key.
    """

    keys: tuple[str, ...]
    base_url: str


# A collection that defines these secrets has its runs' model calls made with them instead of the
# server's provider settings (proxy/runs/credentials.py). They belong to the model relay: no
# runbook secret may name one, so they never enter a sandbox.
PROVIDER_SECRETS: Mapping[str, ProviderSecretNames] = MappingProxyType(
    {
        "anthropic": ProviderSecretNames(("ANTHROPIC_API_KEY",), "ANTHROPIC_BASE_URL"),
        "openai": ProviderSecretNames(("OPENAI_API_KEY",), "OPENAI_BASE_URL"),
        "google": ProviderSecretNames(
            ("GEMINI_API_KEY", "GOOGLE_API_KEY"), "GOOGLE_GEMINI_BASE_URL"
        ),
        "openrouter": ProviderSecretNames(("OPENROUTER_API_KEY",), "OPENROUTER_BASE_URL"),
        "bedrock": ProviderSecretNames(("BEDROCK_API_KEY",), "BEDROCK_BASE_URL"),
    }
)
PROVIDER_SECRET_NAMES = frozenset(
    name for names in PROVIDER_SECRETS.values() for name in (*names.keys, names.base_url)
)

# The agents reach the model relay through these variables; a runbook secret must not be able to
# point an agent elsewhere or read its relay credential by shadowing one.
_RESERVED_ENV_PREFIXES = ("ANTHROPIC_", "OPENAI_", "GEMINI_", "GOOGLE_", "CLAUDE_", "JETTY_")
_RESERVED_ENV_NAMES = frozenset(
    {
        "CODEX_HOME",
        "HOME",
        "PATH",
        "IS_SANDBOX",
        "DISABLE_TELEMETRY",
        "DISABLE_AUTOUPDATER",
        "DISABLE_ERROR_REPORTING",
    }
)
_SYSTEM_ROLES = ("system", "developer")

_T = TypeVar("_T")

EnvironmentKind = Literal["snapshot", "image", "build", "default"]


@dataclass(frozen=True, slots=True)
class PlanDefaults:
    """The server's defaults, used when neither the request nor the runbook decides, and its
    limits on what they may ask for.

    ``model_providers`` maps an agent to its default provider. ``snapshot`` and ``image`` are
    the default environment (a snapshot wins over an image); ``image`` is also the base image of
    a package build that names none. ``cpus`` and ``memory_bytes`` are a run's limits when
    nothing asks for others; ``cpus_max`` and ``memory_max_bytes`` (``None``: no maximum) cap
    what may be asked. ``image_registries`` lists the registries images may come from (empty:
    any). ``network_policy`` says which collections' runs may have a network. Checked on
    construction, so a bad configuration fails at start-up rather than on the first request.
    """

    # Agent -> provider, for agents whose default is not the first of their providers.
    model_providers: Mapping[str, str] = field(default_factory=dict)
    snapshot: str | None = None
    image: str | None = None
    # Seconds (whole ones from requests and settings).
    timeout_sec: float = 1800
    network_enabled: bool = False
    cpus: float | None = None
    memory_bytes: int | None = None
    cpus_max: float | None = None
    memory_max_bytes: int | None = None
    image_registries: tuple[str, ...] = ()
    network_policy: NetworkPolicy = field(default_factory=NetworkPolicy)
    tool_activity: ToolActivityMode = "reasoning"

    def __post_init__(self) -> None:
        for agent, provider in self.model_providers.items():
            if provider not in agent_providers(agent):
                raise ValueError(f"default model provider {provider!r} cannot serve {agent!r}")
        if self.image is not None:
            check_registry(parse_image_ref(self.image), self.image_registries)
        if self.timeout_sec <= 0:
            raise ValueError("the default timeout must be positive")
        for name, value, limit in (
            ("cpus", self.cpus, self.cpus_max),
            ("memory", self.memory_bytes, self.memory_max_bytes),
        ):
            if value is not None and limit is not None and value > limit:
                raise ValueError(f"the default {name} is over the maximum")


@dataclass(frozen=True, slots=True)
class Environment:
    """Where the run executes.

    ``kind`` says what was asked for: ``snapshot`` (``reference`` is the snapshot's name),
    ``image`` (``reference`` is an image reference), ``build`` (install ``pip_packages`` and
    ``apt_packages`` on ``base_image``, which is ``None`` when neither request, runbook nor
    server names one) or ``default`` (nothing was asked; ``reference`` is the server's default
    image, or ``None`` to leave the choice to the sandbox backend).
    """

    kind: EnvironmentKind
    reference: str | None = None
    base_image: str | None = None
    pip_packages: tuple[str, ...] = ()
    apt_packages: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RunPlan:
    """A fully resolved run. ``system_prompt`` is the rendered runbook body (front matter
    removed); ``secret_env`` maps environment variable names to secret values and is left out
    of ``repr`` so that logging a plan cannot leak them."""

    agent: str
    model: str
    model_provider: str
    system_prompt: str
    instruction: str
    environment: Environment
    timeout_sec: float
    network_enabled: bool
    cpus: float | None
    memory_bytes: int | None
    max_turns: int | None
    tool_activity: ToolActivityMode
    detach: bool
    collection: str | None
    task: str | None
    file_paths: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    template_variables: Mapping[str, str] = field(default_factory=dict)
    primary_outputs: tuple[str, ...] = ()
    evaluation: Any = None
    warnings: tuple[str, ...] = ()
    secret_env: Mapping[str, str] = field(default_factory=dict, repr=False)


def resolve_plan(
    model: str,
    messages: Sequence[Mapping[str, Any]],
    block: JettyBlock,
    runbook_text: str,
    defaults: PlanDefaults,
    collection_secrets: Mapping[str, str],
) -> RunPlan:
    """Decide every setting of a runbook run, or raise a 400 naming what is wrong.

    ``runbook_text`` is the runbook: the system message content (:func:`system_text`) or the
    document fetched from ``jetty.runbook_url``. ``model`` is the request's model; an empty one
    falls back to the front matter's. ``collection_secrets`` maps the collection's secret names
    to values; only those the front matter declares reach the run.
    """
    source = "jetty.runbook_url" if block.runbook_url else "messages"
    warnings: list[str] = []
    if block.runbook_url and system_text(messages).strip():
        warnings.append("The system message was ignored because jetty.runbook_url is set")
    if not runbook_text.strip():
        raise InvalidField(
            source, "Runbook mode needs the runbook as the system message or in jetty.runbook_url"
        )
    runbook = parse_runbook(runbook_text, param=source)
    front = runbook.front_matter
    if not runbook.body.strip():
        raise InvalidField(source, "The runbook has no instructions after its front matter")

    model = model.strip() or (front.model or "").strip()
    if not model:
        raise InvalidField("model", "Name a model in the request or in the runbook front matter")
    agent = block.agent or front.agent or infer_agent(model)
    provider: str = (
        block.model_provider
        or front.model_provider
        or defaults.model_providers.get(agent)
        or agent_providers(agent)[0]
    )
    if provider not in agent_providers(agent):
        works = ", ".join(sorted(agent_providers(agent)))
        # Only an explicit provider can mismatch: the defaults are checked against the table.
        raise InvalidField(
            "jetty.model_provider" if block.model_provider else source,
            f"Agent '{agent}' cannot use model provider '{provider}'; it works with: {works}",
        )

    variables = {**front.variables, **block.template_variables}
    system_prompt = render_template(runbook.body, variables)
    secret_env = _secret_env(front, block.collection, collection_secrets, source)
    environment, lost = _environment(block, front, defaults)
    if environment.kind != "snapshot":  # a snapshot's image is the server's own
        image_field = "base_image" if environment.kind == "build" else "image"
        check_image_registry(
            environment.base_image if environment.kind == "build" else environment.reference,
            defaults.image_registries,
            # The request's own field when it set one (it wins over the front matter's).
            param=f"jetty.{image_field}" if getattr(block, image_field) else source,
        )
    cpus = _first(block.cpus, front.cpus, defaults.cpus)
    memory_bytes = _first(block.memory_bytes, front.memory_bytes, defaults.memory_bytes)
    check_resources(
        cpus,
        memory_bytes,
        cpus_max=defaults.cpus_max,
        memory_max_bytes=defaults.memory_max_bytes,
        cpus_param="jetty.cpus" if block.cpus is not None else source,
        memory_param="jetty.memory" if block.memory_bytes is not None else source,
    )

    return RunPlan(
        agent=agent,
        model=model,
        model_provider=provider,
        system_prompt=system_prompt,
        instruction=_instruction(messages),
        environment=environment,
        timeout_sec=_first(block.timeout_sec, front.timeout_sec, defaults.timeout_sec),
        network_enabled=_first(
            block.network_enabled, front.network_enabled, defaults.network_enabled
        ),
        cpus=cpus,
        memory_bytes=memory_bytes,
        max_turns=_first(block.max_turns, front.max_turns, None),
        tool_activity=(
            block.tool_activity
            if "tool_activity" in block.model_fields_set
            else defaults.tool_activity
        ),
        detach=block.detach,
        collection=block.collection,
        task=block.task,
        file_paths=tuple(block.file_paths),
        files=tuple(block.files),
        template_variables=MappingProxyType(variables),
        primary_outputs=tuple(front.primary_outputs),
        evaluation=front.evaluation,
        warnings=(*warnings, *lost),
        secret_env=MappingProxyType(secret_env),
    )


def system_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text of every system (or developer) message, joined by blank lines."""
    texts = [
        _text(message.get("content"), f"messages[{index}].content")
        for index, message in enumerate(messages)
        if message.get("role") in _SYSTEM_ROLES
    ]
    return "\n\n".join(text for text in texts if text)


def _instruction(messages: Sequence[Mapping[str, Any]]) -> str:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user":
            content = messages[index].get("content")
            text = _text(content, f"messages[{index}].content", attachments=True)
            return text if text.strip() else DEFAULT_INSTRUCTION
    return DEFAULT_INSTRUCTION


def _text(content: object, param: str, *, attachments: bool = False) -> str:
    """A message's content as text. A user message's attachment parts are not text (the run
    writes them to /app/assets, `proxy.runs.attachments`); any other part is a 400."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise InvalidField(param, "Message content must be a string or a list of parts")
    texts: list[str] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if attachments and kind in ATTACHMENT_PARTS:
            continue
        if kind != "text":
            what = "text and attached files" if attachments else "text only"
            raise InvalidField(
                f"{param}[{index}]", f"Runbook mode takes {what}, not a part of type {kind!r}"
            )
        if not isinstance(part.get("text"), str):
            raise InvalidField(f"{param}[{index}].text", "A text part needs a 'text' string")
        texts.append(part["text"])
    return "\n".join(texts)


def _first(request: _T | None, front_matter: _T | None, default: _T) -> _T:
    if request is not None:
        return request
    return front_matter if front_matter is not None else default


def _environment(
    block: JettyBlock, front: FrontMatter, defaults: PlanDefaults
) -> tuple[Environment, list[str]]:
    """The environment, and a warning for each requested setting that lost to a higher one."""
    layers: tuple[tuple[str, JettyBlock | FrontMatter], ...] = (
        ("jetty.{}", block),
        ("front matter '{}'", front),
    )
    chosen = next(
        (
            (label, layer)
            for label, layer in layers
            if layer.snapshot or layer.image or layer.base_image
        ),
        None,
    )
    # Packages are resolved field by field: a request's pip_packages add to a runbook's base_image.
    pip_label, pip = _packages(layers, "pip_packages")
    apt_label, apt = _packages(layers, "apt_packages")

    if chosen is None:
        if pip or apt:
            return Environment("build", None, defaults.image, pip, apt), []
        if defaults.snapshot:
            return Environment("snapshot", defaults.snapshot), []
        return Environment("default", defaults.image), []

    label, layer = chosen
    if not layer.snapshot and not layer.image:
        return Environment("build", None, layer.base_image, pip, apt), []
    winner: EnvironmentKind = "snapshot" if layer.snapshot else "image"
    losers = ("image", "base_image") if layer.snapshot else ("base_image",)
    warnings = [
        f"{label.format(name)} was ignored because {label.format(winner)} takes priority"
        for name in losers
        if getattr(layer, name)
    ]
    warnings += [
        f"{package_label.format(name)} was ignored because packages are only installed on a "
        f"base_image build and {label.format(winner)} takes priority"
        for name, package_label, values in (
            ("pip_packages", pip_label, pip),
            ("apt_packages", apt_label, apt),
        )
        if values
    ]
    return Environment(winner, layer.snapshot or layer.image), warnings


def _packages(
    layers: Sequence[tuple[str, JettyBlock | FrontMatter]], name: str
) -> tuple[str, tuple[str, ...]]:
    """The first layer's list of packages called ``name``, with that layer's label."""
    for label, layer in layers:
        values: list[str] | None = getattr(layer, name)
        if values is not None:
            return label, tuple(values)
    return "", ()


def _secret_env(
    front: FrontMatter, collection: str | None, secrets: Mapping[str, str], source: str
) -> dict[str, str]:
    """Environment variables for the secrets the runbook declares, from the collection's."""
    env: dict[str, str] = {}
    missing: list[str] = []
    seen: set[str] = set()
    for name, decl in front.secrets.items():
        if name in PROVIDER_SECRET_NAMES:
            raise InvalidField(
                source,
                f"Runbook secret '{name}' is a model provider credential: the model relay uses"
                " it for the agent's model calls and it never enters the sandbox; give the"
                " runbook's secret another name",
            )
        variable = decl.env
        if (
            variable in _RESERVED_ENV_NAMES
            or variable in PROVIDER_SECRET_NAMES
            or variable.startswith(_RESERVED_ENV_PREFIXES)
        ):
            raise InvalidField(
                source,
                f"Runbook secret '{name}' would set {variable}, which is reserved for the agent",
            )
        if variable in seen:
            raise InvalidField(source, f"Two runbook secrets set the same variable {variable}")
        seen.add(variable)
        value = secrets.get(name)
        if value is not None:
            env[variable] = value
        elif decl.required:
            missing.append(name)
    if missing:
        names = ", ".join(f"'{name}'" for name in missing)
        where = f"collection '{collection}'" if collection else "the default collection"
        plural = "s" if len(missing) > 1 else ""
        raise InvalidField(
            "jetty.collection",
            f"Runbook requires secret{plural} {names} which {where} does not define",
        )
    return env
