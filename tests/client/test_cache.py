"""The encrypted credential cache: private files, tamper detection, refresh before expiry."""

from __future__ import annotations

import json
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.client import cache
from broker.client.paths import cache_file, config_dir

URL = "https://broker.example.com"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BROKER_CLIENT_HOME", str(tmp_path))
    return tmp_path


def put(role: str, duration: int | None, expires_in: float) -> bytes:
    expires = datetime.now(UTC) + timedelta(seconds=expires_in)
    body = json.dumps(
        {
            "Version": 1,
            "AccessKeyId": "ASIAEXAMPLE",
            "SecretAccessKey": "s3cr3t-value",
            "SessionToken": "tok",
            "Expiration": expires.isoformat().replace("+00:00", "Z"),
        }
    ).encode()
    cache.write(URL, role, duration, body, expires.timestamp())
    return body


def test_round_trip_encrypted_and_private() -> None:
    body = put("ro", None, 3600)
    path = Path(cache_file(URL, "ro", None))
    assert b"s3cr3t-value" not in path.read_bytes()  # never on disk in clear
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((Path(config_dir()) / "cache.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert cache.read(URL, "ro", None) == body


def test_credentials_near_expiry_are_not_served() -> None:
    put("ro", None, cache.REFRESH_MARGIN_SECONDS + 60)
    assert cache.read(URL, "ro", None) is not None
    assert cache.read(URL, "ro", None, now=time.time() + 61) is None


def test_tampered_or_swapped_cache_is_ignored() -> None:
    put("ro", None, 3600)
    put("admin", None, 3600)
    ro, admin = Path(cache_file(URL, "ro", None)), Path(cache_file(URL, "admin", None))
    ro.write_bytes(admin.read_bytes())  # another role's ciphertext under this role's name
    assert cache.read(URL, "ro", None) is None
    blob = bytearray(admin.read_bytes())
    blob[-1] ^= 1
    admin.write_bytes(bytes(blob))
    assert cache.read(URL, "admin", None) is None
    put("admin", None, 3600)
    extended = bytearray(admin.read_bytes())
    extended[4:12] = int(time.time() + 10**6).to_bytes(8, "big")  # push the clear-text expiry out
    admin.write_bytes(bytes(extended))
    assert cache.read(URL, "admin", None) is None


def test_clear_removes_every_cached_set() -> None:
    put("ro", None, 3600)
    put("ro", 900, 3600)
    assert cache.clear() == 2
    assert cache.read(URL, "ro", None) is None


def test_fast_cipher_is_cryptographys_public_aesgcm() -> None:
    """The hot path's AES-GCM must be exactly the class cryptography publishes (see cache._aesgcm)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    assert cache._aesgcm() is AESGCM
