"""Operator subcommands (`broker requests ...`) against SQLite and PostgreSQL, as an operator runs them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from broker.aws.sts import Sts
from broker.cli import app
from broker.services import build_services
from broker.settings import load_settings
from broker.store import queries
from broker.store.db import Database
from tests.test_elevation import ALICE, CTX, jit_role


@pytest.fixture
def config_file(make_config: Callable[..., dict[str, Any]], tmp_path: Path) -> Path:
    config = make_config(admin={"request_operators": ["oncall"]})
    config["roles"] = [*config["roles"], jit_role()]
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def pending_request(config_file: Path) -> tuple[int, Database]:
    settings = load_settings(config_file)
    services = build_services(settings, sts=Sts(settings.aws))
    db, ops = services.db, services.operations
    view = ops.elevation.request(ALICE, role="prod-admin", reason="INC-7", duration_seconds=900, ctx=CTX)
    return view.id, db


def refusals(db: Database) -> list[tuple[str, str | None, str]]:
    with db.transaction() as session:
        rows = queries.search_audit_events(session, event="access_request")
        return [(e.reason, e.principal, e.outcome) for e in rows if e.outcome == "denied"]


@pytest.mark.parametrize(
    ("as_name", "reason"),
    [
        ("alice@example.test", "self_approval"),  # the requester, by email
        ("alice", "self_approval"),  # ... or by username
        ("ALICE@example.test", "self_approval"),
        ("someone-else", "not_an_approver"),  # an operator the configuration does not name
    ],
)
def test_the_cli_refuses_self_approval_and_unnamed_operators(config_file: Path, as_name: str, reason: str) -> None:
    request_id, db = pending_request(config_file)
    try:
        for action in ("approve", "deny"):
            result = CliRunner().invoke(
                app, ["requests", action, str(request_id), "-c", str(config_file), "--as", as_name]
            )
            assert result.exit_code == 1, result.output
            assert f"access_denied ({reason})" in result.output
            assert "Approved" not in result.output
        assert refusals(db) == [(reason, f"operator:{as_name}", "denied")] * 2
        with db.transaction() as session:
            row = queries.get_access_request(session, request_id=request_id)
            assert row is not None and row.status == "pending"
    finally:
        db.dispose()


def test_an_operator_the_configuration_names_approves(config_file: Path) -> None:
    request_id, db = pending_request(config_file)
    try:
        result = CliRunner().invoke(
            app, ["requests", "approve", str(request_id), "-c", str(config_file), "--as", "oncall"]
        )
        assert result.exit_code == 0, result.output
        assert f"Approved request {request_id}: alice@example.test -> prod-admin" in result.output
        assert refusals(db) == []
    finally:
        db.dispose()
