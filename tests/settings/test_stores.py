"""Identity stores: break-glass accounts hold a real password hash."""

from __future__ import annotations

from pathlib import Path

from tests.support.config_files import good, problems


def test_local_account_needs_argon2id_hash(tmp_path: Path) -> None:
    data = good() | {
        "identity_stores": [
            {
                "type": "local",
                "name": "bg",
                "accounts": [{"username": "x", "password_hash": "plaintext", "totp_secret": "JBSWY3DPEHPK3PXP"}],
            }
        ]
    }
    assert "argon2id" in problems(tmp_path, data)["identity_stores[0].accounts[0].password_hash"]
