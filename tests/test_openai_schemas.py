"""The extract of OpenAI's spec the tests validate against, and the script that makes it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.openapi import SCHEMAS, validate

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "extract_openai_schemas.py"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [ref for key, value in node.items() for ref in _refs(value)] + (
            [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        )
    if isinstance(node, list):
        return [ref for item in node for ref in _refs(item)]
    return []


def test_the_vendored_extract_is_whole_and_still_strict() -> None:
    extract = json.loads(SCHEMAS.read_text())
    schemas = extract["components"]["schemas"]
    for ref in _refs(schemas):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    assert (SCHEMAS.parent / "LICENSE").read_text().startswith("The MIT License")
    validate("ErrorResponse", {"error": {"message": "m", "type": "t", "param": None, "code": None}})
    with pytest.raises(jsonschema.ValidationError):
        validate("ErrorResponse", {"error": {"message": "m", "type": "t"}})
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
    }
    validate("CreateChatCompletionStreamResponse", chunk)
    with pytest.raises(jsonschema.ValidationError):
        validate("CreateChatCompletionStreamResponse", {**chunk, "object": "chat.completion"})


def test_the_script_keeps_the_roots_and_what_they_reach(tmp_path: Path) -> None:
    spec = {
        "openapi": "3.1.0",
        "info": {"title": "OpenAI API", "version": "9.9.9", "contact": {"name": "x"}},
        "paths": {"/x": {}},
        "components": {
            "schemas": {
                "ErrorResponse": {"properties": {"error": {"$ref": "#/components/schemas/Error"}}},
                "Error": {"type": "object", "nullable": True},
                "Unrelated": {"type": "string"},
                **{
                    name: {"type": "object"}
                    for name in (
                        "ChatCompletionRequestUserMessage",
                        "CreateChatCompletionStreamResponse",
                        "DeleteFileResponse",
                        "ListFilesResponse",
                        "ListModelsResponse",
                        "OpenAIFile",
                    )
                },
            }
        },
    }
    (tmp_path / "openapi.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out" / "schemas.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "openapi.yaml"), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    extract = json.loads(out.read_text())
    assert extract["info"] == {"title": "OpenAI API", "version": "9.9.9"}
    schemas = extract["components"]["schemas"]
    assert "Unrelated" not in schemas and "paths" not in extract
    assert schemas["Error"] == {"type": "object", "nullable": True}  # copied unchanged
    assert len(schemas) == 8
