"""`broker configure-aws` edits ~/.aws/config without disturbing anything it does not own."""

from __future__ import annotations

import stat
from pathlib import Path

from broker.client.aws_config import MARK, write_profiles

EXISTING = """# my personal settings
[default]
region = eu-west-1   # keep this comment

[profile work-admin]
role_arn = arn:aws:iam::111122223333:role/Admin
source_profile = default
"""


def test_other_profiles_and_comments_survive(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(EXISTING)
    path.chmod(0o640)
    added, updated = write_profiles(
        {"readonly": {"credential_process": "broker credential-process --role readonly"}}, path
    )
    text = path.read_text()
    assert (added, updated) == (["readonly"], [])
    assert text.startswith(EXISTING)  # byte for byte
    assert "[profile readonly]\n" + MARK in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # the user's permissions are kept


def test_rewriting_replaces_only_our_section(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(EXISTING)
    write_profiles({"readonly": {"credential_process": "old"}, "admin": {"credential_process": "a"}}, path)
    with path.open("a") as handle:
        handle.write("[profile after]\nregion = us-east-2\n")
    added, updated = write_profiles({"readonly": {"credential_process": "new", "region": "eu-west-1"}}, path)
    text = path.read_text()
    assert (added, updated) == ([], ["readonly"])
    assert "credential_process = old" not in text and "credential_process = new" in text
    assert "[profile admin]" in text and "[profile after]\nregion = us-east-2" in text
    assert text.count("[profile readonly]") == 1


def test_new_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "aws" / "config"
    write_profiles({"x": {"credential_process": "c"}}, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
