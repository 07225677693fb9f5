"""Server settings: the only module that reads the environment.

Precedence, highest first: command-line flags (passed as keyword overrides),
environment variables prefixed ``JETTY_PROXY_``, the TOML file given with
``--config``, then the defaults below.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from proxy.browsers import is_loopback_name, normalise_origin
from proxy.egress import AddressPolicy
from proxy.jetty.fields import parse_memory
from proxy.jetty.imageref import DEFAULT_REGISTRY, InvalidImageRef, parse_image_ref
from proxy.presets import Preset, check_preset_names
from proxy.prices import ModelPrice
from proxy.quota.limits import Limits
from proxy.sandbox.selection import check_backend_name
from proxy.store.blobs.factory import parse_blob_url

DEFAULT_UPSTREAM_URL = "https://api.openai.com/v1"
# Kubernetes object names: RFC 1123 labels (namespaces) and subdomains (most other objects).
_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(
    r"(?=.{1,253}$)[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
)

NetworkAccess = Literal["allowed", "denied"]
#: Bytes, from an int or a size such as "512m" or "4g" (binary units, as Docker reads them).
MemorySize = Annotated[int, BeforeValidator(parse_memory)]


def default_data_dir() -> Path:
    """Per-user data directory (XDG on Linux)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "jetty-proxy"


class UpstreamRoute(BaseModel):
    """Routes models whose name matches ``pattern`` (shell-style glob) to one upstream."""

    model_config = ConfigDict(extra="forbid")

    pattern: str
    base_url: str
    api_key: SecretStr | None = None

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return _validate_base_url(value)


class SnapshotSettings(BaseModel):
    """One ``[snapshots.NAME]`` table: a named, pre-built environment.

    For a built-in snapshot (``python312-uv``, ``prism-playwright``) every field is optional
    and replaces the built-in's; a new snapshot needs at least ``image``. ``dockerfile`` is
    what `jetty-proxy snapshots build` builds (its directory is the build context) and
    ``build_args`` are passed to it; ``base_snapshot`` names a snapshot to build first, whose
    image is then passed as the ``BASE_IMAGE`` build argument. ``warm`` sandboxes of the
    snapshot (with the server's default limits) are kept started for its runs.
    """

    model_config = ConfigDict(extra="forbid")

    image: str | None = None
    dockerfile: Path | None = None
    description: str | None = None
    includes: list[str] | None = None
    build_args: dict[str, str] | None = None
    base_snapshot: str | None = None
    warm: int | None = Field(default=None, ge=0, le=64)


class CollectionPolicy(Limits):
    """One ``[collections.NAME]`` table: the server's rules for one collection: its runs'
    network, and its limits (see `proxy.quota`).

    A field left out follows the server-wide setting (``network_policy``,
    ``[default_limits]``); limits set at runtime through the API replace these.
    """

    model_config = ConfigDict(extra="forbid")

    network: NetworkAccess | None = Field(
        default=None, description="whether runs may ask for network_enabled: true"
    )


class Settings(BaseSettings):
    """Everything configurable about one proxy process."""

    model_config = SettingsConfigDict(
        env_prefix="JETTY_PROXY_", extra="forbid", validate_default=True
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = Field(
        default=None, description="sqlite:///PATH or postgresql://…; default SQLite in data_dir"
    )
    database_timeout: float = Field(
        default=5.0,
        gt=0,
        description="longest wait for the database before a request fails with 503",
    )

    upstream_url: str = DEFAULT_UPSTREAM_URL
    upstream_api_key: SecretStr | None = None
    upstreams: list[UpstreamRoute] = Field(default_factory=list)
    upstream_connect_timeout: float = Field(default=10.0, gt=0)
    upstream_read_timeout: float = Field(default=600.0, gt=0)
    models_cache_seconds: float = Field(default=60.0, ge=0)
    anthropic_base_url: str = "https://api.anthropic.com"
    anthropic_api_key: SecretStr | None = None
    openai_base_url: str = DEFAULT_UPSTREAM_URL
    openai_api_key: SecretStr | None = None
    google_base_url: str = "https://generativelanguage.googleapis.com"
    google_api_key: SecretStr | None = None
    # model_provider "openrouter": Claude Code's Messages go to {openrouter_base_url}/v1/messages,
    # Codex's Responses calls to {openrouter_base_url}/v1/responses.
    openrouter_base_url: str = "https://openrouter.ai/api"
    openrouter_api_key: SecretStr | None = None
    # model_provider "bedrock": an Anthropic-Messages gateway in front of Bedrock (the proxy does
    # not sign AWS requests itself); without a base URL, bedrock runs are refused.
    bedrock_base_url: str | None = Field(
        default=None,
        description="Anthropic-Messages-compatible gateway to Amazon Bedrock (e.g. LiteLLM)",
    )
    bedrock_api_key: SecretStr | None = None

    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    # What clients must keep to while they send a request (proxy.server.EdgeLimits).
    request_head_max_bytes: int = Field(default=64 * 1024, ge=1024)
    request_head_max_headers: int = Field(default=100, ge=1)
    request_head_timeout: float = Field(default=10.0, gt=0)
    request_body_timeout: float = Field(
        default=30.0, gt=0, description="plus a second per request_body_min_rate bytes received"
    )
    request_body_min_rate: int = Field(default=500, gt=0, description="bytes per second")
    idle_connection_timeout: float = Field(
        default=75.0, gt=0, description="how long an idle connection waits for its next request"
    )
    keepalive_seconds: float = Field(default=15.0, gt=0)
    still_running_seconds: float = Field(
        default=20.0,
        ge=0,
        description="while an agent's tool runs silently, a 'still running' reasoning line"
        " this often in run streams (0: none)",
    )
    insecure_no_auth: bool = False
    auth_cache_seconds: float = Field(default=2.0, ge=0)
    auth_grace_seconds: float = Field(
        default=60.0,
        ge=0,
        description="while the database is unreachable, keys confirmed this recently are"
        " still accepted (0: refuse them with 503)",
    )
    log_level: str = "info"
    # Lists: comma-separated (or a JSON array) in the environment, lists in TOML.
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="web origins (scheme://host:port) whose pages may use the server: CORS,"
        " and, on a server without keys, leave to send requests",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names a loopback server without keys answers to, besides loopback"
        " names and public_base_url's",
    )

    blob_dir: Path | None = Field(
        default=None, description="where uploads and artifacts are kept; default data_dir/blobs"
    )
    # The object store's endpoint, region and credentials are the standard AWS settings
    # (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ...), read by its client library.
    blob_url: str | None = Field(
        default=None,
        description="file:///DIR or s3://BUCKET/PREFIX (needs jetty-proxy[s3]);"
        " default file:// in blob_dir",
    )
    upload_max_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    attachments_max_files: int = Field(
        default=100,
        gt=0,
        description="files a runbook request may attach to its messages (all turns of a"
        " conversation; each up to upload_max_bytes, all together too)",
    )
    min_free_disk_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=0,
        description="/readyz says not ready when the blob or database disk has less free",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="key(s) sealing collection secrets, comma-separated, newest first;"
        " default: generated once into data_dir/secret.key",
    )
    record_chat_content: bool = False
    chat_record_backlog_bytes: int = Field(
        default=64 * 1024 * 1024,
        gt=0,
        description="records of relayed completions held for retry while the database or"
        " disk fails; past it the oldest are dropped (counted in /metrics)",
    )
    events_poll_seconds: float = Field(default=0.5, gt=0)
    agent_cache_dir: Path | None = Field(
        default=None, description="where the pinned agent CLIs live; default data_dir/agents"
    )

    # Runbook runs.
    backend: str = Field(
        default="auto",
        description="sandbox backend: auto (Docker when it answers, else local), docker, local,"
        " kubernetes",
    )
    local_bwrap: bool | None = Field(
        default=None,
        description="local backend: true requires bubblewrap, false never uses it;"
        " default: use it when installed",
    )
    docker_host: str | None = Field(
        default=None, description="unix:// URL of the Docker engine; default $DOCKER_HOST"
    )
    default_image: str | None = Field(
        default=None, description="image for runs that name no environment"
    )
    run_timeout_sec: int = Field(default=1800, ge=1, le=86400)
    results_max_bytes: int = Field(default=1024 * 1024 * 1024, gt=0)
    results_max_files: int = Field(default=10_000, gt=0)
    # Follow-up turns: a finished run's sandbox waits this long for the conversation's next
    # turn (0 = never; the turn then starts a new sandbox restored from what the run saved).
    keep_sandbox_seconds: float = Field(default=600.0, ge=0, le=86400)
    session_max_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    # Servers sharing a database: each records that it is alive every heartbeat_seconds; one
    # silent for server_stale_seconds is gone, and every sweep_seconds the others look for the
    # sandboxes and live runs of gone servers (removed and failed).
    heartbeat_seconds: float = Field(default=10.0, gt=0, le=3600)
    server_stale_seconds: float = Field(
        default=120.0,
        gt=0,
        le=86400,
        description="a server that has not recorded a heartbeat for this long is gone",
    )
    sweep_seconds: float = Field(
        default=60.0,
        gt=0,
        le=86400,
        description="how often a server looks for the sandboxes and runs of gone servers",
    )
    public_base_url: str | None = Field(
        default=None,
        description="absolute URL clients reach this server at, for the links in answers;"
        " default: the request's own scheme and Host",
    )
    # Result files, results zip and run page are linked with signed URLs (keyed with
    # secret_key) that open without an API key until they expire.
    link_lifetime_seconds: int = Field(default=7 * 86400, ge=60, le=400 * 86400)
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="addresses (or CIDR ranges) of reverse proxies whose Forwarded /"
        " X-Forwarded-Proto / X-Forwarded-Host headers are believed",
    )
    # What a run may have, and ask for: limits applied when a run asks for none, and the most
    # it may ask for (a request over the maximum is a 400).
    run_memory_default: MemorySize | None = Field(
        default=4 * 1024**3, description="memory limit of a run that asks for none"
    )
    run_memory_max: MemorySize | None = Field(
        default=16 * 1024**3, description="the most memory a run may ask for (none: no cap)"
    )
    run_cpus_default: float | None = Field(
        default=2.0, gt=0, le=64, description="CPU limit of a run that asks for none"
    )
    run_cpus_max: float | None = Field(
        default=8.0, gt=0, le=64, description="the most CPUs a run may ask for (none: no cap)"
    )
    network_policy: NetworkAccess = Field(
        default="denied",
        description="whether runs may ask for network_enabled: true; [collections.NAME]"
        " tables decide for one collection",
    )
    collections: dict[str, CollectionPolicy] = Field(
        default_factory=dict,
        description="per-collection rules ([collections.NAME] tables): network, limits",
    )
    default_limits: Limits = Field(
        default_factory=Limits,
        description="limits of collections that set none ([default_limits] table)",
    )
    limits_sync_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="how often spend and request counts are written to and read from the"
        " database (servers sharing it see each other's that late)",
    )
    image_registries: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="registries run images may come from (docker.io: the default one); empty: any",
    )
    run_read_only_rootfs: bool = Field(
        default=True,
        description="Docker runs get a read-only root filesystem: only /app and /tmp (the"
        " agent's HOME) are writable",
    )
    run_capabilities: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Linux capabilities Docker runs get back (all are dropped; e.g. CHOWN,"
        " SETUID, SETGID for images that apt-get install at run time)",
    )
    fetch_allow_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="internal hosts (names, addresses or networks) that URLs a client gives"
        " may reach, e.g. an intranet runbook server",
    )

    # The Kubernetes sandbox backend: one Pod per run (see docs/kubernetes.md).
    kubeconfig: Path | None = Field(
        default=None,
        description="kubeconfig file of the cluster that runs sandbox Pods;"
        " default $KUBECONFIG, else the in-cluster service account",
    )
    kube_namespace: str = Field(
        default="jetty-sandboxes", description="namespace the sandbox Pods are created in"
    )
    kube_runtime_class: str | None = Field(
        default=None, description="RuntimeClass of sandbox Pods (e.g. gvisor); default none"
    )
    relay_url: str | None = Field(
        default=None,
        description="URL at which sandbox Pods reach this server's model relay"
        " (a Service in the cluster, e.g. http://jetty-proxy-relay.jetty-proxy:8081)",
    )
    relay_host: str = Field(
        default="127.0.0.1",
        description="address the model relay's TCP port binds (0.0.0.0 in a cluster)",
    )
    relay_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="TCP port of the model relay for sandboxes on a network (Kubernetes);"
        " default none: the relay is only on its unix socket",
    )
    agents_image: str | None = Field(
        default=None,
        description="image with the pinned agent CLIs that sandbox Pods copy them from;"
        " default the tag `jetty-proxy agents image` gives it",
    )

    # Chat UIs: presets offered as models (jetty/NAME).
    presets: dict[str, Preset] = Field(default_factory=dict)

    # What model calls cost: these prices add models to the price database, or replace its.
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description='[prices."MODEL"] tables (MODEL may be a shell pattern): US dollars per'
        " million tokens",
    )

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, value: str) -> str:
        return check_backend_name(value)

    @field_validator("presets")
    @classmethod
    def _check_presets(cls, value: dict[str, Preset]) -> dict[str, Preset]:
        return check_preset_names(value)

    # Environments: snapshots, pulled images and package builds.
    snapshots: dict[str, SnapshotSettings] = Field(
        default_factory=dict, description="snapshot catalog entries, added to the built-ins"
    )
    snapshots_dir: Path | None = Field(
        default=None,
        description="where the built-in snapshots' Dockerfiles are;"
        " default the project's deploy/snapshots",
    )
    default_snapshot: str | None = Field(
        default="python312-uv",
        description="snapshot for runs that name no environment; an explicitly set"
        " default_image takes its place unless this is set too",
    )
    images_max_bytes: int = Field(
        default=20 * 1024**3,
        gt=0,
        description="size above which pulled images and package builds unused for longest"
        " are removed",
    )
    environment_timeout_sec: int = Field(default=1800, ge=1, le=86400)
    build_ca_bundle: Path | None = Field(
        default=None,
        description="CA bundle that package builds trust (a TLS-inspecting proxy between the"
        " engine and the package registries)",
    )

    @field_validator(
        "allowed_origins",
        "allowed_hosts",
        "image_registries",
        "run_capabilities",
        "fetch_allow_hosts",
        "forwarded_allow_ips",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        return [normalise_origin(origin) for origin in value]

    @field_validator("image_registries")
    @classmethod
    def _check_registries(cls, value: list[str]) -> list[str]:
        for registry in value:
            try:
                ref = parse_image_ref(f"{registry}/x")
            except InvalidImageRef:
                ref = None
            if registry != DEFAULT_REGISTRY and (ref is None or ref.registry != registry):
                raise ValueError(f"{registry!r} is not a registry host such as ghcr.io")
        return [registry.lower() for registry in value]

    @field_validator("fetch_allow_hosts")
    @classmethod
    def _check_allow_hosts(cls, value: list[str]) -> list[str]:
        AddressPolicy.from_entries(value)
        return value

    @field_validator("run_capabilities")
    @classmethod
    def _check_capabilities(cls, value: list[str]) -> list[str]:
        names = [name.upper().removeprefix("CAP_") for name in value]
        for name in names:
            if not name.replace("_", "").isalnum() or name == "ALL":
                raise ValueError(f"{name!r} is not a capability name such as CHOWN")
        return names

    @model_validator(mode="after")
    def _check_heartbeats(self) -> Settings:
        # A live server whose beat is a little late must not look gone to the others.
        if self.server_stale_seconds < 2 * self.heartbeat_seconds:
            raise ValueError("server_stale_seconds must be at least twice heartbeat_seconds")
        return self

    @model_validator(mode="after")
    def _check_run_limits(self) -> Settings:
        for name in ("memory", "cpus"):
            default = getattr(self, f"run_{name}_default")
            maximum = getattr(self, f"run_{name}_max")
            if default is not None and maximum is not None and default > maximum:
                raise ValueError(f"run_{name}_default is over run_{name}_max")
        return self

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _check_addresses(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise ValueError(f"{entry!r} is not an IP address or CIDR range") from exc
        return value

    @field_validator("public_base_url")
    @classmethod
    def _check_public_base_url(cls, value: str | None) -> str | None:
        return _validate_base_url(value) if value else None

    @field_validator("upstream_url")
    @classmethod
    def _check_upstream(cls, value: str) -> str:
        return _validate_base_url(value)

    @field_validator(
        "anthropic_base_url", "openai_base_url", "google_base_url", "openrouter_base_url"
    )
    @classmethod
    def _check_provider(cls, value: str) -> str:
        return _validate_base_url(value)

    @field_validator("blob_url")
    @classmethod
    def _check_blob_url(cls, value: str | None) -> str | None:
        if value is not None:
            parse_blob_url(value)
        return value

    @field_validator("bedrock_base_url")
    @classmethod
    def _check_optional_provider(cls, value: str | None) -> str | None:
        return _validate_base_url(value) if value else None

    @field_validator("relay_url")
    @classmethod
    def _check_relay_url(cls, value: str | None) -> str | None:
        return _validate_base_url(value) if value else None

    @field_validator("kube_namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if not _DNS_LABEL.fullmatch(value):
            raise ValueError("must be a DNS-1123 label (lowercase letters, digits and '-')")
        return value

    @field_validator("kube_runtime_class")
    @classmethod
    def _check_runtime_class(cls, value: str | None) -> str | None:
        if value is not None and not _DNS_SUBDOMAIN.fullmatch(value):
            raise ValueError("must be a DNS-1123 subdomain (a RuntimeClass name)")
        return value or None

    @field_validator("agents_image")
    @classmethod
    def _check_agents_image(cls, value: str | None) -> str | None:
        if value:
            try:
                parse_image_ref(value)
            except InvalidImageRef as exc:
                raise ValueError(str(exc)) from exc
        return value or None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'jetty-proxy.db'}"

    @property
    def blobs(self) -> Path:
        return self.blob_dir or self.data_dir / "blobs"

    @property
    def blob_store_url(self) -> str:
        """``blob_url``, else the ``file://`` URL of `blobs`."""
        return self.blob_url or self.blobs.absolute().as_uri()

    @property
    def effective_default_snapshot(self) -> str | None:
        """``default_snapshot``, unless only ``default_image`` was configured."""
        if self.default_image and "default_snapshot" not in self.model_fields_set:
            return None
        return self.default_snapshot or None

    @property
    def kubeconfig_file(self) -> Path | None:
        """``kubeconfig``, else the first file of ``$KUBECONFIG``; None means in-cluster."""
        if self.kubeconfig is not None:
            return self.kubeconfig
        first = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
        return Path(first) if first else None

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def local_user_allowed(self) -> bool:
        """Whether a server without keys may serve everyone as the single local user: on a
        loopback bind, or when told so with ``--insecure-no-auth``."""
        return self.is_loopback or self.insecure_no_auth

    def route_for(self, model: str) -> tuple[str, SecretStr | None]:
        """The upstream base URL and key for ``model``: first matching route wins."""
        for route in self.upstreams:
            if fnmatch.fnmatchcase(model, route.pattern):
                return route.base_url, route.api_key
        return self.upstream_url, self.upstream_api_key

    def all_upstreams(self) -> list[tuple[str, SecretStr | None]]:
        """Each distinct upstream once, the default first."""
        seen: dict[str, SecretStr | None] = {self.upstream_url: self.upstream_api_key}
        for route in self.upstreams:
            seen.setdefault(route.base_url, route.api_key)
        return list(seen.items())


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from flags (``overrides``), the environment and ``config_file``.

    Overrides whose value is ``None`` are ignored, so unset CLI flags fall through.
    """
    if config_file is not None and not config_file.is_file():
        raise ValueError(f"config file not found: {config_file}")
    flags = {key: value for key, value in overrides.items() if value is not None}
    if config_file is None:
        return Settings(**flags)

    config = SettingsConfigDict(**{**Settings.model_config, "toml_file": config_file})
    from_file = type("FileSettings", (Settings,), {"model_config": config})
    settings: Settings = from_file(**flags)
    return settings


def is_loopback_host(host: str) -> bool:
    """Whether binding ``host`` serves this machine only."""
    return is_loopback_name(host.lower())


def _validate_base_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")
