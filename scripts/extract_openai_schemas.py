#!/usr/bin/env python3
"""Extract from OpenAI's OpenAPI spec the schemas the tests validate responses against.

    python scripts/extract_openai_schemas.py path/to/openapi.yaml [--out FILE]

The spec is ``openapi.yaml`` of the public repository openai/openai-openapi. The output
(``tests/support/openai-openapi/schemas.json`` by default) holds the spec's ``info`` and, under
``components.schemas``, each schema in :data:`ROOTS` and every schema they reach through
``$ref``, copied unchanged: validating against the extract is validating against the spec.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

#: The schemas ``tests/support/openapi.py`` validates against.
ROOTS = (
    "ChatCompletionRequestUserMessage",
    "CreateChatCompletionStreamResponse",
    "DeleteFileResponse",
    "ErrorResponse",
    "ListFilesResponse",
    "ListModelsResponse",
    "OpenAIFile",
)
_PREFIX = "#/components/schemas/"
_DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests/support/openai-openapi/schemas.json"


def extract(spec: dict[str, Any], roots: tuple[str, ...] = ROOTS) -> dict[str, Any]:
    """The part of ``spec`` that validating against ``roots`` needs."""
    schemas: dict[str, Any] = spec["components"]["schemas"]
    kept: dict[str, Any] = {}
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in kept:
            continue
        kept[name] = schemas[name]
        for ref in _refs(schemas[name]):
            if not ref.startswith(_PREFIX):
                raise ValueError(f"{name} refers outside the spec's schemas: {ref}")
            pending.append(ref.removeprefix(_PREFIX))
    info = {key: spec["info"][key] for key in ("title", "version")}
    return {
        "openapi": spec["openapi"],
        "info": info,
        "components": {"schemas": dict(sorted(kept.items()))},
    }


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="OpenAI's openapi.yaml")
    parser.add_argument("--out", type=Path, default=_DEFAULT_OUT)
    args = parser.parse_args(argv)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with args.spec.open("rb") as handle:
        spec = yaml.load(handle, Loader=loader)  # noqa: S506 (a safe loader)
    extracted = extract(spec)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(extracted, indent=1, ensure_ascii=False) + "\n")
    count = len(extracted["components"]["schemas"])
    print(f"{count} schemas of spec {spec['info']['version']} written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
