"""The ``scim`` section: hashes only, known stores, one client per store, and `broker scim token`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from broker.cli import app
from broker.scim.service import token_hash
from tests.support.config_files import good, problems

HASH = "sha256:" + "ab" * 32


def with_scim(*clients: dict[str, Any]) -> dict[str, Any]:
    stores = [{"type": "local", "name": "corp", "accounts": []}, {"type": "local", "name": "other", "accounts": []}]
    return {**good(), "identity_stores": stores, "scim": {"clients": list(clients)}}


def test_a_token_in_clear_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, with_scim({"name": "okta", "token_hash": "plain-token-not-a-hash", "store": "corp"}))
    assert "sha256:<64 hex digits>" in found["scim.clients[0].token_hash"]


def test_a_client_names_a_configured_store(tmp_path: Path) -> None:
    found = problems(tmp_path, with_scim({"name": "entra", "token_hash": HASH, "store": "nowhere"}))
    assert found["scim.clients[0].store"] == "unknown identity store 'nowhere'"


def test_clients_are_unique_per_store_and_token(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        with_scim(
            {"name": "okta", "token_hash": HASH, "store": "corp"},
            {"name": "entra", "token_hash": HASH, "store": "corp"},
        ),
    )
    assert found["scim"] == "clients: each store may appear once; clients: every client needs its own token"


def test_broker_scim_token_prints_a_token_and_its_hash() -> None:
    result = CliRunner().invoke(app, ["scim", "token", "--client", "okta"])
    assert result.exit_code == 0, result.output
    token = result.output.splitlines()[1]
    assert len(token) == 48
    assert f"token_hash: {token_hash(token)}" in result.output
    assert re.search(r"- name: okta", result.output)
    bad = CliRunner().invoke(app, ["scim", "token", "--client", "Not A Name"])
    assert bad.exit_code == 2
