"""Roles: administrator policies must be marked as such."""

from __future__ import annotations

from pathlib import Path

from broker.settings import load_settings
from tests.support.config_files import good, problems, write


def test_admin_policy_is_accepted_when_marked(tmp_path: Path) -> None:
    data = good()
    data["roles"][0]["session_policy"] = {"Statement": [{"Effect": "Allow", "Action": ["*"], "Resource": "*"}]}
    data["roles"][0]["allow_admin"] = True
    assert load_settings(write(tmp_path, data)).roles[0].allow_admin


def test_administrator_access_policy_arn_needs_allow_admin(tmp_path: Path) -> None:
    data = good()
    data["roles"][0]["policy_arns"] = ["arn:aws:iam::aws:policy/AdministratorAccess"]
    assert "allow_admin" in problems(tmp_path, data)["roles[0]"]
