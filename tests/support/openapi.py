"""Validate response bodies against OpenAI's published OpenAPI spec.

The spec is not vendored: it is read from ``../shared/openai-openapi/openapi.yaml``
beside the project (or ``$JETTY_PROXY_OPENAPI_SPEC``). Its old ``nullable: true``
keyword is rewritten into JSON Schema's ``null`` type before validation.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

_DEFAULT_SPEC = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "openai-openapi" / "openapi.yaml"
)


def spec_path() -> Path:
    return Path(os.environ.get("JETTY_PROXY_OPENAPI_SPEC", str(_DEFAULT_SPEC)))


@functools.cache
def _spec() -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with spec_path().open("rb") as handle:
        spec: dict[str, Any] = yaml.load(handle, Loader=loader)
    denulled: dict[str, Any] = _denullable(spec)
    return denulled


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
