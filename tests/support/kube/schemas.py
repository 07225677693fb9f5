"""Kubernetes objects checked against the published schemas, offline.

The schemas are the JSON schemas generated from Kubernetes' own OpenAPI documents, one set per
minor version, as bundled by the ``kubernetes-validate`` package (its ``-strict`` variants
forbid fields a schema does not declare). `validate` reports every violation, not only the
first, as `Cause`s shaped like the ``causes`` of the API server's ``Status`` (``field`` is a
dotted path, ``message`` says what is wrong)::

    causes = validate(pod_manifest, "1.30")
    assert causes == []

`SUPPORTED` are the Kubernetes minors the project supports; tests validate against the
oldest and newest of them.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jsonschema
import kubernetes_validate
import referencing
import referencing.jsonschema

SUPPORTED = ("1.30", "1.37")


class UnknownKind(LookupError):
    """No schema for the object's apiVersion and kind in that Kubernetes version."""


@dataclass(frozen=True)
class Cause:
    """One schema violation: ``reason`` is the API server's word for it."""

    field: str
    message: str
    reason: str

    def as_status_cause(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}


def validate(
    obj: dict[str, Any], version: str, *, strict: bool = True, schema: str | None = None
) -> list[Cause]:
    """Every way ``obj`` violates the schema of its kind in Kubernetes ``version`` ("1.30").

    ``schema`` names the schema file to use instead of the one of the object's kind (e.g.
    ``status-meta-v1`` for a ``Status``).
    """
    validator = _validator(schema or _schema_name(obj), version, strict)
    causes = []
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path))):
        causes.extend(_causes(error))
    return causes


def _causes(error: jsonschema.ValidationError) -> list[Cause]:
    # Errors under anyOf/oneOf (e.g. "string or null") carry the useful detail in their context.
    if error.context:
        leaves = [leaf for sub in error.context for leaf in _causes(sub)]
        if leaves:
            return leaves[:1]
    path = _field(error)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else ""
        return [Cause(f"{path}.{missing}".lstrip("."), "Required value", "FieldValueRequired")]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        return [
            Cause(f"{path}.{name}".lstrip("."), "field not declared in schema", "FieldValueInvalid")
            for name in error.instance
            if name not in allowed
        ]
    if error.validator == "enum":
        return [Cause(path, f"Unsupported value: {error.message}", "FieldValueNotSupported")]
    return [Cause(path, f"Invalid value: {error.message}", "FieldValueInvalid")]


def _field(error: jsonschema.ValidationError) -> str:
    parts: list[str] = []
    for item in error.absolute_path:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts)


def _schema_name(obj: dict[str, Any]) -> str:
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        raise UnknownKind("the object names no apiVersion and kind")
    group, _, version = api_version.rpartition("/")
    group = group.split(".", 1)[0]
    return f"{kind.lower()}-{group}-{version}" if group else f"{kind.lower()}-{version}"


@functools.cache
def _registry(version: str, strict: bool) -> tuple[str, referencing.Registry[Any]]:
    directory = _schema_dir(version, strict)
    definitions = json.loads(directory.joinpath("_definitions.json").read_text())
    resource = referencing.Resource.from_contents(
        definitions, default_specification=referencing.jsonschema.DRAFT202012
    )
    return str(directory), resource @ referencing.Registry()


@functools.cache
def _validator(name: str, version: str, strict: bool) -> jsonschema.Draft202012Validator:
    directory = _schema_dir(version, strict)
    path = directory.joinpath(f"{name}.json")
    if not path.is_file():
        raise UnknownKind(f"no schema {name} in Kubernetes {version}")
    schema = json.loads(path.read_text())
    _, registry = _registry(version, strict)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _schema_dir(version: str, strict: bool) -> Any:
    root = resources.files(kubernetes_validate).joinpath("kubernetes-json-schema")
    name = f"v{version}.0-local" + ("-strict" if strict else "")
    directory = root.joinpath(name)
    if not directory.is_dir():
        raise UnknownKind(f"kubernetes-validate has no schemas for Kubernetes {version}")
    return directory
