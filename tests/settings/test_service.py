"""Service settings: the audit trail's anchors."""

from __future__ import annotations

import subprocess
from pathlib import Path

from broker.settings import load_settings
from tests.support.config_files import good, problems, run_cli, write


def test_audit_anchor_problems_are_reported_at_once(tmp_path: Path) -> None:
    rsa = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (tmp_path / "rsa.pem").write_text(rsa)
    data = good() | {
        "audit": {
            "seal_interval_seconds": 0,
            "anchor": {"signing_key": f"file:{tmp_path / 'rsa.pem'}", "directory": str(tmp_path / "digests")},
        }
    }
    found = problems(tmp_path, data)
    assert "greater than 0" in found["audit.seal_interval_seconds"]
    assert "must be an Ed25519 key" in found["audit.anchor.signing_key"]
    unsigned = problems(tmp_path, good() | {"audit": {"anchor": {"directory": str(tmp_path)}}})
    assert "directory or s3 needs signing_key" in unsigned["audit.anchor"]
    checked = run_cli("config", "check", str(write(tmp_path, data)))
    assert checked.returncode == 2
    assert "audit.anchor.signing_key" in checked.stderr and "audit.seal_interval_seconds" in checked.stderr


def test_audit_anchor_with_an_ed25519_key_loads(tmp_path: Path) -> None:
    key = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519"], capture_output=True, text=True, check=True
    ).stdout
    (tmp_path / "anchor.pem").write_text(key)
    anchor = {"signing_key": f"file:{tmp_path / 'anchor.pem'}", "s3": {"bucket": "audit-digests"}}
    settings = load_settings(write(tmp_path, good() | {"audit": {"anchor": anchor}}))
    assert settings.audit.anchor.enabled and settings.audit.seal_window_seconds == 31
    assert settings.audit.anchor.s3 is not None and settings.audit.anchor.s3.lock_mode == "COMPLIANCE"
