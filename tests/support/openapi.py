"""Validate response bodies against OpenAI's published OpenAPI spec.

The schemas come from ``openai-openapi/schemas.json`` beside this module: the part of the spec
the tests need, extracted unchanged (see the README there). The spec's old ``nullable: true``
keyword is rewritten into JSON Schema's ``null`` type before validation.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SCHEMAS = Path(__file__).resolve().parent / "openai-openapi" / "schemas.json"


@functools.cache
def _spec() -> dict[str, Any]:
    spec: dict[str, Any] = _denullable(json.loads(SCHEMAS.read_text()))
    return spec


def _denullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_denullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _denullable(value) for key, value in node.items()}
    if node.pop("nullable", False) is True:
        kind = node.get("type")
        if isinstance(kind, str):
            node["type"] = [kind, "null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        elif isinstance(kind, list):
            node["type"] = [*kind, "null"]
        else:
            return {"anyOf": [node, {"type": "null"}]}
    return node


@functools.cache
def _validator(schema_name: str) -> jsonschema.Draft202012Validator:
    spec = _spec()
    resource = Resource.from_contents(spec, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("spec", resource)
    schema = {"$ref": f"spec#/components/schemas/{schema_name}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(schema_name: str, instance: Any) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``instance`` fits the named schema."""
    _validator(schema_name).validate(json.loads(json.dumps(instance)))


def validate_sse_chunks(body: str) -> list[dict[str, Any]]:
    """Validate every ``data:`` payload of a chat stream; returns the parsed chunks."""
    chunks: list[dict[str, Any]] = []
    for line in body.splitlines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            continue
        chunk = json.loads(payload)
        if "error" in chunk:
            validate("ErrorResponse", chunk)
        else:
            validate("CreateChatCompletionStreamResponse", chunk)
            chunks.append(chunk)
    return chunks
