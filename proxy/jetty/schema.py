"""The ``jetty`` block of a chat completions request.

``parse_jetty_block(body["jetty"])`` validates the block once, at the edge, and turns the first
problem into an :class:`~proxy.errors.InvalidField` whose ``param`` names the field as the
client wrote it (``jetty.timeout_sec``, ``jetty.pip_packages[2]``). Unknown fields are refused:
a misspelt option silently doing nothing is worse than a 400.

Optional fields are ``None`` when the client left them out, so that resolution can tell "not
given" from a value and let the runbook's front matter or the server's defaults fill them in.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from proxy.errors import InvalidField
from proxy.jetty.fields import (
    MAX_PATHS,
    Agent,
    AptPackages,
    Cpus,
    FileId,
    ImageReference,
    MaxTurns,
    MemoryBytes,
    PipPackages,
    Provider,
    ResourceName,
    RunbookUrl,
    StoragePath,
    TemplateVariables,
    TimeoutSec,
    ToolActivity,
    error_detail,
    error_path,
)

__all__ = ["JettyBlock", "parse_jetty_block"]


class JettyBlock(BaseModel):
    """Every field a request's ``jetty`` block may carry.

    ``memory`` is accepted as ``"512m"``, ``"8G"``, ``"1.5g"`` or an int of bytes and stored as
    :attr:`memory_bytes`. ``template_variables`` values may be strings, numbers or booleans;
    they are kept as strings. ``tool_activity`` says where the agent's tool calls show up in
    the stream: as reasoning (default), as content, or not at all. ``detach`` keeps the run
    going when the client disconnects.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    runbook: bool = False
    collection: ResourceName | None = None
    task: ResourceName | None = None
    agent: Agent | None = None
    model_provider: Provider | None = None

    snapshot: ResourceName | None = None
    image: ImageReference | None = None
    base_image: ImageReference | None = None
    pip_packages: PipPackages | None = None
    apt_packages: AptPackages | None = None

    file_paths: list[StoragePath] = Field(default_factory=list, max_length=MAX_PATHS)
    files: list[FileId] = Field(default_factory=list, max_length=MAX_PATHS)
    template_variables: TemplateVariables = Field(default_factory=dict)
    runbook_url: RunbookUrl | None = None

    timeout_sec: TimeoutSec | None = None
    network_enabled: bool | None = None
    cpus: Cpus | None = None
    memory_bytes: MemoryBytes | None = Field(default=None, validation_alias="memory")
    max_turns: MaxTurns | None = None
    tool_activity: ToolActivity = "reasoning"
    detach: bool = False


def parse_jetty_block(raw: object) -> JettyBlock:
    """Validate a request's ``jetty`` value.

    Raises :class:`~proxy.errors.InvalidField` (400) naming the first offending field, e.g.
    ``jetty.timeout_sec``, or ``jetty`` itself when the value is not an object.
    """
    if not isinstance(raw, dict):
        raise InvalidField("jetty", "'jetty' must be a JSON object")
    try:
        return JettyBlock.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = error_path(error, "jetty")
        if error["type"] == "extra_forbidden":
            known = ", ".join(_client_field_names())
            raise InvalidField(param, f"Unknown field '{param}'; known fields: {known}") from exc
        raise InvalidField(param, f"Invalid '{param}': {error_detail(error)}") from exc


def _client_field_names() -> list[str]:
    return [
        info.validation_alias if isinstance(info.validation_alias, str) else name
        for name, info in JettyBlock.model_fields.items()
    ]
