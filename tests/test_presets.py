"""Presets from the config file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from proxy.presets import Preset, model_entries, preset_name, preset_request
from proxy.settings import load_settings
from tests.support.chat_ui_prompts import template


def test_presets_load_from_toml_and_are_checked(tmp_path: Path) -> None:
    runbook = tmp_path / "ds.md"
    runbook.write_text("# Data science\n")
    config = tmp_path / "proxy.toml"
    config.write_text(
        "[presets.data-science]\n"
        'model = "claude-sonnet-4-6"\n'
        f'runbook_file = "{runbook}"\n'
        'jetty = { collection = "acme", timeout_sec = 600 }\n'
    )
    preset = load_settings(config).presets["data-science"]
    assert preset.collection == "acme"
    assert preset.runbook_text() == "# Data science\n"

    config.write_text('[presets.bad]\nmodel = "m"\njetty = { timeout_sec = "soon" }\n')
    with pytest.raises(ValidationError, match="timeout_sec"):
        load_settings(config)
    config.write_text('[presets."no spaces"]\nmodel = "m"\n')
    with pytest.raises(ValidationError, match="invalid preset name"):
        load_settings(config)
    with pytest.raises(ValidationError, match="not both"):
        Preset(model="m", runbook="x", runbook_file=runbook)


def test_preset_request_merges_the_block_and_adds_the_runbook() -> None:
    preset = Preset(model="m", runbook="# RB", jetty={"collection": "acme", "timeout_sec": 60})
    messages = [{"role": "user", "content": "hi"}]
    merged, block = preset_request(preset, messages, {"timeout_sec": 30})
    assert merged[0] == {"role": "system", "content": "# RB"}
    assert block == {"collection": "acme", "timeout_sec": 30, "runbook": True}
    own = [{"role": "system", "content": "mine"}, *messages]
    assert preset_request(preset, own, None)[0] == own


def test_retrieval_context_in_a_system_message_does_not_replace_the_runbook() -> None:
    # Open WebUI with RAG_SYSTEM_CONTEXT sends its retrieval template as a system message.
    preset = Preset(model="m", runbook="# RB")
    rag = template("open-webui", "rag").replace("{{CONTEXT}}", '<source id="1">x</source>')
    messages = [{"role": "system", "content": rag}, {"role": "user", "content": "hi"}]
    merged, _ = preset_request(preset, messages, None)
    assert merged == [{"role": "system", "content": "# RB"}, *messages]
    # Appended to a system prompt of the user's own, which replaces the runbook as before.
    own = [{"role": "system", "content": f"mine\n{rag}"}, messages[1]]
    assert preset_request(preset, own, None)[0] == own


def test_model_ids_and_visibility() -> None:
    presets = {
        "a": Preset(model="m", jetty={"collection": "acme"}),
        "b": Preset(model="m", jetty={"collection": "globex"}),
    }
    assert preset_name("jetty/a") == "a"
    assert preset_name("gpt-4o") is None
    ids = [e["id"] for e in model_entries(presets, lambda c: c == "acme")]
    assert ids == ["jetty/a"]
