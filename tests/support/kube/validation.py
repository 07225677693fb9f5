"""What the stand-in checks in an object it is sent, in the order the real API server does.

1. ``apiVersion``/``kind`` must match the URL, the namespace the request's: else 400.
2. Unknown fields, per the ``fieldValidation`` query (the server's default is ``Warn``): a 400
   ``strict decoding error`` under ``Strict``, a ``Warning`` header under ``Warn``.
3. The object against the published schema of its kind (`tests.support.kube.schemas`):
   422 ``Invalid`` with one cause per violation.
4. A few of the server's own rules that the schemas cannot say and the sandbox objects
   depend on: names, labels, required containers, unique container names, volume mounts that
   name a volume. 422 as well.
"""

from __future__ import annotations

import re
from typing import Any

from tests.support.kube.schemas import Cause, validate
from tests.support.kube.status import ApiError, bad_request, invalid

_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_QUALIFIED = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or"
    " '.', and must start and end with an alphanumeric character"
)
_LABEL_MESSAGE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-',"
    " and must start and end with an alphanumeric character"
)


def check_object(
    obj: object,
    *,
    api_version: str,
    kind: str,
    namespace: str | None,
    version: str,
    field_validation: str,
) -> list[str]:
    """Raise `ApiError` for an object the server would refuse; return its warnings."""
    if not isinstance(obj, dict):
        raise bad_request("the body of the request was in an unknown format")
    if obj.get("apiVersion") != api_version or obj.get("kind") != kind:
        raise bad_request(
            f"the API version in the data ({obj.get('apiVersion')}) does not match the expected"
            f" API version ({api_version})"
            if obj.get("apiVersion") != api_version
            else f"the kind in the data ({obj.get('kind')}) does not match the expected kind"
            f" ({kind})"
        )
    metadata = obj.get("metadata") or {}
    if namespace is not None and metadata.get("namespace") not in (None, namespace):
        raise bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
        )
    name = str(metadata.get("name") or "")
    unknown = [c for c in validate(obj, version, strict=True) if c.message.startswith("field not")]
    warnings: list[str] = []
    if unknown:
        if field_validation == "Strict":
            listed = ", ".join(f'unknown field "{cause.field}"' for cause in unknown)
            raise bad_request(f"strict decoding error: {listed}")
        if field_validation != "Ignore":
            warnings = [f'unknown field "{cause.field}"' for cause in unknown]
    causes = validate(obj, version, strict=False)
    if namespace is not None:
        causes += _server_rules(obj)
    if causes:
        raise invalid(kind, name, causes)
    return warnings


def _server_rules(obj: dict[str, Any]) -> list[Cause]:
    """The server's checks of a named, namespaced object."""
    causes: list[Cause] = []
    metadata = obj.get("metadata") or {}
    name = metadata.get("name")
    if not name:
        causes.append(
            Cause("metadata.name", "Required value: name or generateName is required", _REQUIRED)
        )
    elif len(name) > 253 or not _SUBDOMAIN.fullmatch(name):
        causes.append(_bad("metadata.name", name, _SUBDOMAIN_MESSAGE))
    for key, value in (metadata.get("labels") or {}).items():
        prefix, _, label = key.rpartition("/")
        if not _QUALIFIED.fullmatch(label) or len(label) > 63 or len(prefix) > 253:
            causes.append(_bad("metadata.labels", key, "name part must be a qualified name"))
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
            causes.append(
                _bad(
                    "metadata.labels",
                    value,
                    "a valid label must be 63 characters"
                    " or less, alphanumeric at both ends, with '-', '_' or '.'",
                )
            )
    if obj.get("kind") == "Pod":
        causes += _pod_rules(obj.get("spec") or {})
    return causes


def _pod_rules(spec: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    volumes = {volume.get("name") for volume in spec.get("volumes") or []}
    if not spec.get("containers"):
        causes.append(Cause("spec.containers", "Required value", _REQUIRED))
    seen: set[str] = set()
    for group in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(group) or []):
            where = f"spec.{group}[{index}]"
            name = container.get("name") or ""
            if not _DNS_LABEL.fullmatch(name) or len(name) > 63:
                causes.append(_bad(f"{where}.name", name, _LABEL_MESSAGE))
            elif name in seen:
                causes.append(
                    Cause(f"{where}.name", f'Duplicate value: "{name}"', "FieldValueDuplicate")
                )
            seen.add(name)
            if not container.get("image"):
                causes.append(Cause(f"{where}.image", "Required value", _REQUIRED))
            for mount_index, mount in enumerate(container.get("volumeMounts") or []):
                if mount.get("name") not in volumes:
                    causes.append(
                        Cause(
                            f"{where}.volumeMounts[{mount_index}].name",
                            f'Not found: "{mount.get("name")}"',
                            "FieldValueNotFound",
                        )
                    )
    policy = spec.get("restartPolicy")
    if isinstance(policy, str) and policy not in ("Always", "OnFailure", "Never"):
        message = f'Unsupported value: "{policy}": supported values: "Always", "OnFailure", "Never"'
        causes.append(Cause("spec.restartPolicy", message, "FieldValueNotSupported"))
    deadline = spec.get("activeDeadlineSeconds")
    if isinstance(deadline, int) and deadline < 1:
        causes.append(
            _bad("spec.activeDeadlineSeconds", deadline, "must be between 1 and 2147483647")
        )
    return causes


_REQUIRED = "FieldValueRequired"


def _bad(field: str, value: object, why: str) -> Cause:
    shown = f'"{value}"' if isinstance(value, str) else str(value)
    return Cause(field, f"Invalid value: {shown}: {why}", "FieldValueInvalid")


__all__ = ["ApiError", "check_object"]
