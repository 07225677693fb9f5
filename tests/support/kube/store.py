"""The stand-in's objects: one resourceVersion counter for all of them, and watch events.

Like etcd behind the real server, every change gets the next resourceVersion, and a watch
from version N sees every change after N (``ADDED``, ``MODIFIED``, ``DELETED``, each with the
whole object). A watch without a version first lists what exists as ``ADDED``. Selectors:
``labelSelector`` with ``=``, ``==``, ``!=``, ``key``, ``!key``, ``in (…)`` and ``notin (…)``;
``fieldSelector`` with ``metadata.name`` and ``metadata.namespace``.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio

from tests.support.kube.status import ApiError, bad_request

Obj = dict[str, Any]
Matcher = Callable[[Obj], bool]

_SET_TERM = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Event:
    version: int
    resource: str
    type: str
    obj: Obj


class Store:
    """Objects by resource ("pods", "networkpolicies") and (namespace, name)."""

    def __init__(self) -> None:
        self._version = 0
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {}
        self._events: list[Event] = []
        # Made by the first watch, so that a store can be built outside the event loop.
        self._changed: anyio.Event | None = None

    @property
    def version(self) -> int:
        return self._version

    def get(self, resource: str, namespace: str, name: str) -> Obj | None:
        found = self._objects.get(resource, {}).get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def list(self, resource: str, namespace: str | None, matches: Matcher) -> list[Obj]:
        return [
            copy.deepcopy(obj)
            for (ns, _), obj in sorted(self._objects.get(resource, {}).items())
            if namespace in (None, ns) and matches(obj)
        ]

    def create(self, resource: str, namespace: str, obj: Obj) -> Obj:
        metadata = obj.setdefault("metadata", {})
        metadata.update(
            namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1
        )
        self._objects.setdefault(resource, {})[(namespace, metadata["name"])] = obj
        return self._changed_to(resource, "ADDED", obj)

    def update(self, resource: str, obj: Obj) -> Obj:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key not in self._objects.get(resource, {}):
            return obj  # deleted meanwhile: the change is dropped
        self._objects[resource][key] = obj
        return self._changed_to(resource, "MODIFIED", obj)

    def delete(self, resource: str, namespace: str, name: str) -> Obj | None:
        obj = self._objects.get(resource, {}).pop((namespace, name), None)
        if obj is None:
            return None
        return self._changed_to(resource, "DELETED", obj)

    def _changed_to(self, resource: str, kind: str, obj: Obj) -> Obj:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)
        snapshot = copy.deepcopy(obj)
        self._events.append(Event(self._version, resource, kind, snapshot))
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        return copy.deepcopy(snapshot)

    async def watch(
        self, resource: str, namespace: str | None, matches: Matcher, since: int | None
    ) -> AsyncIterator[tuple[str, Obj]]:
        """Changes after ``since`` (None: the current objects as ADDED first), forever."""
        if since is None:
            for obj in self.list(resource, namespace, matches):
                yield "ADDED", obj
            since = self._version
        while True:
            if self._changed is None:
                self._changed = anyio.Event()
            changed = self._changed
            for event in [e for e in self._events if e.version > since]:
                since = event.version
                ns = event.obj["metadata"].get("namespace")
                wanted = event.resource == resource and namespace in (None, ns)
                if wanted and matches(event.obj):
                    yield event.type, copy.deepcopy(event.obj)
            await changed.wait()


def selector(label_selector: str | None, field_selector: str | None) -> Matcher:
    """A matcher for the query's ``labelSelector`` and ``fieldSelector``; 400 when unreadable."""
    terms = [_label_term(t) for t in _split(label_selector or "")]
    terms += [_field_term(t) for t in _split(field_selector or "")]
    return lambda obj: all(term(obj) for term in terms)


def _split(text: str) -> list[str]:
    # Commas inside "in (a,b)" do not separate terms.
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def _labels(obj: Obj) -> dict[str, str]:
    labels: dict[str, str] = obj.get("metadata", {}).get("labels") or {}
    return labels


def _label_term(term: str) -> Matcher:
    set_term = _SET_TERM.match(term)
    if set_term:
        key, operator, listed = set_term.groups()
        values = {value.strip() for value in listed.split(",")}
        if operator == "in":
            return lambda obj: _labels(obj).get(key) in values
        return lambda obj: _labels(obj).get(key) not in values
    for operator in ("!=", "==", "="):
        if operator in term:
            key, value = (part.strip() for part in term.split(operator, 1))
            if operator == "!=":
                return lambda obj: _labels(obj).get(key) != value
            return lambda obj: _labels(obj).get(key) == value
    if term.startswith("!"):
        return lambda obj: term[1:] not in _labels(obj)
    if re.fullmatch(r"[A-Za-z0-9./_-]+", term):
        return lambda obj: term in _labels(obj)
    raise bad_request(f"unable to parse requirement: {term!r}")


def _field_term(term: str) -> Matcher:
    negate = "!=" in term
    field, _, value = term.replace("!=", "=").replace("==", "=").partition("=")
    path = field.strip()
    if path not in ("metadata.name", "metadata.namespace"):
        raise bad_request(
            f'"{path}" is not a known field selector: only "metadata.name", "metadata.namespace"'
        )
    attribute = path.split(".", 1)[1]
    return lambda obj: (obj.get("metadata", {}).get(attribute) == value.strip()) != negate


__all__ = ["ApiError", "Event", "Obj", "Store", "now", "selector"]
