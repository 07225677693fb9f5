from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest

from proxy.agents import agent_names, get_adapter
from proxy.errors import InvalidField
from proxy.jetty.plan import (
    API_PROVIDERS,
    DEFAULT_INSTRUCTION,
    PROVIDER_SECRET_NAMES,
    Environment,
    PlanDefaults,
    RunPlan,
    agent_providers,
    resolve_plan,
    system_text,
)
from proxy.jetty.schema import parse_jetty_block

BODY = "# Report\nWrite {{results_dir}}/summary.md.\n"
DEFAULTS = PlanDefaults(image="ghcr.io/acme/base:1", cpus=1.0, memory_bytes=2 * 1024**3)


def runbook(front: str = "", body: str = BODY) -> str:
    return f"---\n{front}---\n{body}" if front else body


def messages(system: Any = BODY, user: Any = "Go.") -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if system is not None:
        out.append({"role": "system", "content": system})
    if user is not None:
        out.append({"role": "user", "content": user})
    return out


def plan(
    front: str = "",
    jetty: dict[str, Any] | None = None,
    *,
    model: str = "claude-sonnet-4-6",
    body: str = BODY,
    defaults: PlanDefaults = DEFAULTS,
    secrets: Mapping[str, str] | None = None,
    msgs: list[dict[str, Any]] | None = None,
    text: str | None = None,
) -> RunPlan:
    block = parse_jetty_block({"runbook": True, **(jetty or {})})
    text = runbook(front, body) if text is None else text
    msgs = messages(text) if msgs is None else msgs
    return resolve_plan(model, msgs, block, text, defaults, secrets or {})


def refused(*args: Any, **kwargs: Any) -> InvalidField:
    with pytest.raises(InvalidField) as caught:
        plan(*args, **kwargs)
    assert caught.value.status_code == 400
    return caught.value


def test_defaults_fill_everything_not_asked_for() -> None:
    result = plan()
    assert result.agent == "claude-code"
    assert result.model == "claude-sonnet-4-6"
    assert result.model_provider == "anthropic"
    assert result.system_prompt == "# Report\nWrite /app/results/summary.md.\n"
    assert result.instruction == "Go."
    assert result.environment == Environment("default", "ghcr.io/acme/base:1")
    assert result.timeout_sec == 1800
    assert result.network_enabled is False
    assert result.cpus == 1.0
    assert result.memory_bytes == 2 * 1024**3
    assert result.max_turns is None
    assert result.tool_activity == "reasoning"
    assert result.detach is False
    assert result.warnings == ()
    assert result.secret_env == {}
    assert result.template_variables == {}


@pytest.mark.parametrize(
    ("model", "agent", "provider"),
    [
        ("claude-opus-4", "claude-code", "anthropic"),
        ("gpt-5", "codex", "openai"),
        ("o4-mini", "codex", "openai"),
        ("gemini-2.5-pro", "gemini-cli", "google"),
        ("some-local-model", "claude-code", "anthropic"),
    ],
)
def test_agent_is_inferred_from_the_model(model: str, agent: str, provider: str) -> None:
    result = plan(model=model)
    assert (result.agent, result.model_provider) == (agent, provider)


def test_agent_precedence_request_then_front_matter_then_model() -> None:
    assert plan("agent: codex\n", model="claude-x").agent == "codex"
    assert plan("agent: codex\n", {"agent": "gemini-cli"}, model="claude-x").agent == "gemini-cli"


def test_default_provider_follows_the_agent_and_the_server() -> None:
    assert plan(jetty={"agent": "codex"}).model_provider == "openai"
    defaults = dataclasses.replace(DEFAULTS, model_providers={"codex": "openrouter"})
    assert plan(jetty={"agent": "codex"}, defaults=defaults).model_provider == "openrouter"
    assert plan(defaults=defaults).model_provider == "anthropic"  # not in the server's map


def test_provider_precedence() -> None:
    assert plan("model_provider: bedrock\n").model_provider == "bedrock"
    result = plan("model_provider: bedrock\n", {"model_provider": "openrouter"})
    assert result.model_provider == "openrouter"


@pytest.mark.parametrize("agent", ["claude-code", "codex", "gemini-cli"])
@pytest.mark.parametrize("provider", ["anthropic", "openai", "google", "openrouter", "bedrock"])
def test_agent_provider_table(agent: str, provider: str) -> None:
    works = {
        ("claude-code", "anthropic"),
        ("claude-code", "openrouter"),
        ("claude-code", "bedrock"),
        ("codex", "openai"),
        ("codex", "openrouter"),
        ("gemini-cli", "google"),
    }
    jetty = {"agent": agent, "model_provider": provider}
    if (agent, provider) in works:
        assert plan(jetty=jetty).model_provider == provider
    else:
        error = refused(jetty=jetty)
        assert error.param == "jetty.model_provider"
        assert f"Agent '{agent}' cannot use model provider '{provider}'" in error.message


def test_a_mismatch_from_the_front_matter_blames_the_runbook() -> None:
    assert refused("agent: codex\nmodel_provider: google\n").param == "messages"
    assert refused("model_provider: google\n", {"agent": "codex"}).param == "messages"
    assert refused("agent: codex\n", {"model_provider": "google"}).param == "jetty.model_provider"


def test_every_agent_has_providers_and_its_default_is_the_first() -> None:
    assert {agent: agent_providers(agent)[0] for agent in agent_names()} == {
        "claude-code": "anthropic",
        "codex": "openai",
        "gemini-cli": "google",
    }
    assert set(API_PROVIDERS) == {get_adapter(agent).relay_api for agent in agent_names()}
    assert agent_providers("no-such-agent") == ()


def test_bad_server_defaults_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="cannot serve 'codex'"):
        PlanDefaults(model_providers={"codex": "google"})
    with pytest.raises(ValueError, match="lowercase"):
        PlanDefaults(image="Not/An/Image")
    with pytest.raises(ValueError, match="timeout"):
        PlanDefaults(timeout_sec=0)


def test_settings_precedence_request_then_front_matter_then_defaults() -> None:
    front = "timeout_sec: 900\nnetwork_enabled: true\ncpus: 4\nmemory: 8g\nmax_turns: 20\n"
    from_front = plan(front)
    assert (from_front.timeout_sec, from_front.network_enabled, from_front.cpus) == (900, True, 4.0)
    assert (from_front.memory_bytes, from_front.max_turns) == (8 * 1024**3, 20)
    jetty = {
        "timeout_sec": 60,
        "network_enabled": False,
        "cpus": 0.5,
        "memory": "512m",
        "max_turns": 3,
    }
    from_request = plan(front, jetty)
    assert (from_request.timeout_sec, from_request.network_enabled) == (60, False)
    assert (from_request.cpus, from_request.memory_bytes, from_request.max_turns) == (
        0.5,
        512 * 1024**2,
        3,
    )


def test_resources_over_the_servers_maximum_are_refused_where_they_were_asked() -> None:
    defaults = dataclasses.replace(DEFAULTS, cpus_max=2.0, memory_max_bytes=4 * 1024**3)
    assert plan(jetty={"cpus": 2, "memory": "4g"}, defaults=defaults).cpus == 2.0
    assert refused(jetty={"cpus": 2.5}, defaults=defaults).param == "jetty.cpus"
    assert refused(jetty={"memory": "5g"}, defaults=defaults).param == "jetty.memory"
    assert refused("memory: 5g\n", defaults=defaults).param == "messages"
    assert refused("cpus: 3\n", {"memory": "1g"}, defaults=defaults).param == "messages"
    with pytest.raises(ValueError, match="default cpus is over the maximum"):
        dataclasses.replace(DEFAULTS, cpus=4.0, cpus_max=2.0)


def test_images_from_registries_the_server_does_not_allow_are_refused() -> None:
    defaults = dataclasses.replace(DEFAULTS, image_registries=("ghcr.io", "localhost:5000"))
    assert plan(jetty={"image": "localhost:5000/acme/env:v1"}, defaults=defaults)
    assert plan(defaults=defaults).environment.reference == "ghcr.io/acme/base:1"
    error = refused(jetty={"image": "docker.io/library/ubuntu"}, defaults=defaults)
    assert error.param == "jetty.image"
    assert "'docker.io' is not allowed on this server" in error.message
    assert refused("image: ubuntu\n", defaults=defaults).param == "messages"
    build = {"base_image": "quay.io/x/y", "pip_packages": ["rich"]}
    assert refused(jetty=build, defaults=defaults).param == "jetty.base_image"
    # A snapshot's image is the server's own: the list does not apply to it.
    assert plan(jetty={"snapshot": "python312-uv"}, defaults=defaults)
    with pytest.raises(ValueError, match="not allowed"):
        dataclasses.replace(DEFAULTS, image_registries=("quay.io",))


def test_tool_activity_default_comes_from_the_server_unless_asked() -> None:
    defaults = dataclasses.replace(DEFAULTS, tool_activity="content")
    assert plan(defaults=defaults).tool_activity == "content"
    assert (
        plan(jetty={"tool_activity": "reasoning"}, defaults=defaults).tool_activity == "reasoning"
    )


def test_model_falls_back_to_the_front_matter() -> None:
    assert plan("model: gpt-5\n", model="").model == "gpt-5"
    assert plan("model: gpt-5\n", model="").agent == "codex"
    assert plan("model: gpt-5\n", model="claude-x").model == "claude-x"
    assert refused(model="  ").param == "model"


def test_runbook_comes_from_system_messages() -> None:
    msgs: list[dict[str, Any]] = [
        {
            "role": "system",
            "content": [{"type": "text", "text": "# One"}, {"type": "text", "text": "two"}],
        },
        {"role": "developer", "content": "three"},
        {"role": "user", "content": "Go."},
    ]
    text = system_text(msgs)
    assert text == "# One\ntwo\n\nthree"
    assert plan(msgs=msgs, text=text).system_prompt == text


@pytest.mark.parametrize(
    ("user", "instruction"),
    [
        (None, DEFAULT_INSTRUCTION),
        ("", DEFAULT_INSTRUCTION),
        ("  ", DEFAULT_INSTRUCTION),
        ("Only the EU data.", "Only the EU data."),
        ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "a\nb"),
    ],
)
def test_instruction_is_the_last_user_message(user: Any, instruction: str) -> None:
    assert plan(msgs=messages(BODY, user)).instruction == instruction


def test_instruction_uses_the_last_user_message_only() -> None:
    msgs = [*messages(BODY, "first"), {"role": "assistant", "content": "ok"}]
    msgs.append({"role": "user", "content": "second"})
    assert plan(msgs=msgs).instruction == "second"


@pytest.mark.parametrize(
    ("content", "param"),
    [
        ([{"type": "text", "text": "a"}, {"type": "video", "video": {}}], "messages[1].content[1]"),
        ([{"type": "text"}], "messages[1].content[0].text"),
        (["plain"], "messages[1].content[0]"),
        (42, "messages[1].content"),
    ],
)
def test_non_text_content_is_refused(content: Any, param: str) -> None:
    assert refused(msgs=messages(BODY, content)).param == param


def test_attachment_parts_are_not_the_instruction() -> None:
    # The run writes them to /app/assets (proxy.runs.attachments); the text is the instruction.
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    content = [{"type": "text", "text": "Describe"}, image, {"type": "text", "text": "it."}]
    assert plan(msgs=messages(BODY, content)).instruction == "Describe\nit."
    assert plan(msgs=messages(BODY, [image])).instruction == "Execute the runbook."
    # A system message takes text only.
    with pytest.raises(InvalidField) as caught:
        system_text([{"role": "system", "content": [{"type": "text", "text": BODY}, image]}])
    assert caught.value.param == "messages[0].content[1]"


def test_an_empty_runbook_is_refused() -> None:
    error = refused(msgs=messages(None), text="")
    assert error.param == "messages"
    assert "system message or in jetty.runbook_url" in error.message
    assert refused(text="---\nagent: codex\n---\n\n").param == "messages"


def test_runbook_url_text_wins_over_the_system_message_with_a_warning() -> None:
    jetty = {"runbook_url": "https://runbooks.example/r.md"}
    result = plan(jetty=jetty, msgs=messages("ignored"), text="Fetched {{results_dir}}")
    assert result.system_prompt == "Fetched /app/results"
    assert result.warnings == ("The system message was ignored because jetty.runbook_url is set",)
    assert plan(jetty=jetty, msgs=messages(None), text="Fetched").warnings == ()
    error = refused("timeout_sec: -1\n", jetty, msgs=messages(None))
    assert error.param == "jetty.runbook_url"


def test_template_variables_from_front_matter_and_request() -> None:
    front = "variables:\n  dataset: sales.csv\n  region: EU\n"
    body = "{{dataset}} {{ region }} {{ n }} {{results_dir}}"
    result = plan(front, {"template_variables": {"region": "US", "n": 3}}, body=body)
    assert result.system_prompt == "sales.csv US 3 /app/results"
    assert result.template_variables == {"dataset": "sales.csv", "region": "US", "n": "3"}


def test_unfilled_variables_are_a_400_listing_all_of_them() -> None:
    error = refused(body="{{ a }} {{b}} {{ c }}", jetty={"template_variables": {"b": "x"}})
    assert error.param == "jetty.template_variables"
    assert "'a', 'c'" in error.message


def test_no_environment_asked_for() -> None:
    assert plan().environment == Environment("default", "ghcr.io/acme/base:1")
    assert plan(defaults=PlanDefaults()).environment == Environment("default", None)
    defaults = PlanDefaults(snapshot="python312-uv", image="ghcr.io/acme/base:1")
    assert plan(defaults=defaults).environment == Environment("snapshot", "python312-uv")


def test_snapshot_beats_image_beats_build_with_warnings() -> None:
    jetty = {
        "snapshot": "python312-uv",
        "image": "ghcr.io/acme/env:v1",
        "base_image": "python:3.12-slim",
        "pip_packages": ["numpy"],
        "apt_packages": [],
    }
    result = plan(jetty=jetty)
    assert result.environment == Environment("snapshot", "python312-uv")
    assert result.warnings == (
        "jetty.image was ignored because jetty.snapshot takes priority",
        "jetty.base_image was ignored because jetty.snapshot takes priority",
        "jetty.pip_packages was ignored because packages are only installed on a base_image "
        "build and jetty.snapshot takes priority",
    )


def test_image_ignores_packages_with_warnings() -> None:
    jetty = {"image": "ghcr.io/acme/env:v1", "pip_packages": ["numpy"], "apt_packages": ["git"]}
    result = plan(jetty=jetty)
    assert result.environment == Environment("image", "ghcr.io/acme/env:v1")
    assert [w.split(" was ")[0] for w in result.warnings] == [
        "jetty.pip_packages",
        "jetty.apt_packages",
    ]
    assert all("jetty.image takes priority" in w for w in result.warnings)


def test_build_from_base_image_and_packages() -> None:
    jetty = {"base_image": "python:3.12-slim", "pip_packages": ["numpy"], "apt_packages": ["git"]}
    result = plan(jetty=jetty)
    assert result.environment == Environment(
        "build", None, "python:3.12-slim", ("numpy",), ("git",)
    )
    assert result.warnings == ()


def test_packages_alone_build_on_the_default_image() -> None:
    result = plan(jetty={"pip_packages": ["numpy"]})
    assert result.environment == Environment("build", None, "ghcr.io/acme/base:1", ("numpy",))


def test_the_request_environment_replaces_the_runbooks_without_warnings() -> None:
    result = plan("snapshot: python312-uv\n", {"image": "ghcr.io/acme/env:v1"})
    assert result.environment == Environment("image", "ghcr.io/acme/env:v1")
    assert result.warnings == ()
    result = plan("image: ghcr.io/acme/env:v1\n", {"base_image": "python:3.12"})
    assert result.environment.kind == "build"
    assert result.environment.base_image == "python:3.12"


def test_the_runbooks_environment_applies_when_the_request_has_none() -> None:
    assert plan("snapshot: prism-playwright\n").environment == Environment(
        "snapshot", "prism-playwright"
    )
    result = plan("snapshot: a\nimage: ghcr.io/acme/env:v1\n")
    assert result.warnings == (
        "front matter 'image' was ignored because front matter 'snapshot' takes priority",
    )


def test_request_packages_against_a_runbook_snapshot_warn() -> None:
    result = plan("snapshot: python312-uv\n", {"pip_packages": ["numpy"]})
    assert result.environment == Environment("snapshot", "python312-uv")
    assert result.warnings == (
        "jetty.pip_packages was ignored because packages are only installed on a base_image "
        "build and front matter 'snapshot' takes priority",
    )


def test_packages_resolve_field_by_field() -> None:
    front = "base_image: python:3.12\npip_packages: [pandas]\napt_packages: [git]\n"
    result = plan(front, {"apt_packages": ["curl"]})
    assert result.environment == Environment("build", None, "python:3.12", ("pandas",), ("curl",))
    result = plan(front, {"pip_packages": []})
    assert result.environment.pip_packages == ()
    assert result.environment.apt_packages == ("git",)


SECRETS_FRONT = """\
secrets:
  GITHUB_TOKEN: {env: GH_TOKEN, description: repo access}
  SLACK_WEBHOOK: {required: false}
  DB_URL:
"""


def test_declared_secrets_become_environment_variables() -> None:
    collection = {"GITHUB_TOKEN": "ghp_1", "DB_URL": "postgres://x", "UNDECLARED": "nope"}
    result = plan(SECRETS_FRONT, {"collection": "acme"}, secrets=collection)
    assert result.secret_env == {"GH_TOKEN": "ghp_1", "DB_URL": "postgres://x"}
    assert "ghp_1" not in repr(result)
    assert "secret_env" not in repr(result)


def test_missing_required_secrets_are_a_400_listing_all_of_them() -> None:
    error = refused(SECRETS_FRONT, {"collection": "acme"}, secrets={"SLACK_WEBHOOK": "x"})
    assert error.param == "jetty.collection"
    assert error.message == (
        "Runbook requires secrets 'GITHUB_TOKEN', 'DB_URL' which collection 'acme' does not define"
    )
    error = refused("secrets: {DB_URL: {}}\n")
    assert (
        error.message
        == "Runbook requires secret 'DB_URL' which the default collection does not define"
    )


@pytest.mark.parametrize(
    "env",
    [
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "OPENAI_API_KEY",
        "GEMINI_API_KEY",
        "GOOGLE_GEMINI_BASE_URL",
        "CODEX_HOME",
        "JETTY_RELAY_API_KEY",
        "HOME",
        "PATH",
        "OPENROUTER_API_KEY",
        "BEDROCK_BASE_URL",
    ],
)
def test_secrets_cannot_shadow_the_agents_variables(env: str) -> None:
    error = refused(f"secrets: {{MINE: {{env: {env}}}}}\n", secrets={"MINE": "x"})
    assert error.param == "messages"
    assert f"would set {env}, which is reserved" in error.message


@pytest.mark.parametrize("name", sorted(PROVIDER_SECRET_NAMES))
@pytest.mark.parametrize("declaration", ["{{{name}: {{}}}}", "{{{name}: {{env: HARMLESS}}}}"])
def test_provider_credentials_never_become_sandbox_secrets(name: str, declaration: str) -> None:
    """A collection's provider keys are the relay's: no runbook secret may carry one into the
    sandbox, under its own name or another variable's."""
    front = f"secrets: {declaration.format(name=name)}\n"
    error = refused(front, {"collection": "acme"}, secrets={name: "sk-provider-secret"})
    assert error.param == "messages"
    assert f"Runbook secret '{name}' is a model provider credential" in error.message
    assert "sk-provider-secret" not in error.message


def test_provider_credentials_in_the_collection_stay_out_of_the_plan() -> None:
    collection = {"ANTHROPIC_API_KEY": "sk-ant-acme", "GITHUB_TOKEN": "ghp_1", "DB_URL": "db"}
    result = plan(SECRETS_FRONT, {"collection": "acme"}, secrets=collection)
    assert "sk-ant-acme" not in result.secret_env.values()
    assert "ANTHROPIC_API_KEY" not in result.secret_env


def test_two_secrets_cannot_share_a_variable() -> None:
    error = refused("secrets: {A: {env: X, required: false}, B: {env: X}}\n", secrets={"B": "b"})
    assert "same variable X" in error.message


def test_pass_through_fields() -> None:
    jetty = {
        "collection": "acme",
        "task": "nightly",
        "file_paths": ["uploads/a.csv"],
        "files": ["file-1"],
        "detach": True,
    }
    front = "primary_outputs: [summary.md]\nevaluation: {rubric: [clarity]}\n"
    result = plan(front, jetty)
    assert (result.collection, result.task, result.detach) == ("acme", "nightly", True)
    assert result.file_paths == ("uploads/a.csv",) and result.files == ("file-1",)
    assert result.primary_outputs == ("summary.md",)
    assert result.evaluation == {"rubric": ["clarity"]}
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.agent = "codex"  # type: ignore[misc]
