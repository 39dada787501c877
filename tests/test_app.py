"""``create_app``: what a production broker serves about itself, over real HTTP (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from broker.app import create_app
from broker.settings import load_settings
from tests.support.processes import LiveServer


@pytest.mark.parametrize(
    ("overrides", "served"),
    [
        ({}, False),  # production: the API map is not handed to everyone
        ({"server": {"api_docs": True}}, True),  # ... unless the operator turns it on
        ({"mode": "dev", "secret_key": "dev-only", "session": {"cookie_secure": False}}, True),  # on in dev
        ({"mode": "dev", "secret_key": "dev-only", "server": {"api_docs": False}}, False),
    ],
)
def test_openapi_document_and_docs_page_are_off_in_production(
    make_config: Callable[..., dict[str, Any]], overrides: dict[str, Any], served: bool
) -> None:
    with LiveServer(create_app(load_settings(None, **make_config(**overrides)))) as server:
        for path in ("/openapi.json", "/api/docs", "/docs"):
            response = httpx.get(server.url + path, timeout=30)
            expected = 200 if served and path != "/docs" else 404
            assert response.status_code == expected, path
        if served:
            assert "/oauth2/token" in httpx.get(server.url + "/openapi.json").json()["paths"]
