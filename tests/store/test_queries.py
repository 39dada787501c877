"""broker.store.queries keeps the older ``queries.<name>`` spelling: each name is the owning module's function."""

from __future__ import annotations

import importlib

from broker.store import queries

OWNERS = [
    "principals",
    "sessions",
    "issuance",
    "replay",
    "audit_trail",
    "signing_keys",
    "mfa",
    "access_requests",
    "deliveries",
    "tokens",
    "device_certificates",
    "scim",
]


def test_every_store_function_is_re_exported_once_from_its_owner() -> None:
    owned: dict[str, str] = {}
    for name in OWNERS:
        module = importlib.import_module(f"broker.store.{name}")
        for attr, value in vars(module).items():
            if callable(value) and getattr(value, "__module__", None) == module.__name__ and not attr.startswith("_"):
                assert attr not in owned, f"{attr} is defined in both {owned[attr]} and {name}"
                owned[attr] = name
    assert sorted(n for n in queries.__all__ if n in owned) == sorted(owned)
    for attr, name in owned.items():
        assert getattr(queries, attr) is getattr(importlib.import_module(f"broker.store.{name}"), attr)
