"""The SQL store keeps the Store protocol's signatures: the contract has one source."""

from __future__ import annotations

import inspect
import re

import pytest

from proxy.store import Store
from proxy.store.sql import SQLStore

METHODS = sorted(name for name in dir(Store) if not name.startswith("_"))


def _signature(function: object) -> inspect.Signature:
    signature = inspect.signature(function)  # type: ignore[arg-type]
    returns = signature.return_annotation
    if hasattr(function, "__wrapped__") and isinstance(returns, str):
        # A generator under @contextmanager: Iterator[T] is the AbstractContextManager[T] it makes.
        returns = re.sub(r"^Iterator\[(.*)\]$", r"AbstractContextManager[\1]", returns)
    return signature.replace(return_annotation=returns)


def test_the_store_has_a_contract() -> None:
    assert {"create_trajectory", "append_event", "subscribe", "beat", "migrate"} <= set(METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_the_sql_store_keeps_each_signature(name: str) -> None:
    assert _signature(getattr(SQLStore, name)) == _signature(getattr(Store, name))
