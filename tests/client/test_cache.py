"""The encrypted credential cache: private files, tamper detection, refresh before expiry."""

from __future__ import annotations

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


def creds(expires_in: float) -> dict[str, object]:
    expiration = (datetime.now(UTC) + timedelta(seconds=expires_in)).isoformat().replace("+00:00", "Z")
    return {
        "Version": 1,
        "AccessKeyId": "ASIAEXAMPLE",
        "SecretAccessKey": "s3cr3t-value",
        "SessionToken": "tok",
        "Expiration": expiration,
    }


def test_round_trip_encrypted_and_private() -> None:
    cache.write(URL, "ro", None, creds(3600))
    path = cache_file(URL, "ro", None)
    assert b"s3cr3t-value" not in path.read_bytes()  # never on disk in clear
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((config_dir() / "cache.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    served = cache.read(URL, "ro", None)
    assert served is not None and served["SecretAccessKey"] == "s3cr3t-value"


def test_credentials_near_expiry_are_not_served() -> None:
    cache.write(URL, "ro", None, creds(cache.REFRESH_MARGIN_SECONDS + 60))
    assert cache.read(URL, "ro", None) is not None
    assert cache.read(URL, "ro", None, now=time.time() + 61) is None


def test_tampered_or_swapped_cache_is_ignored() -> None:
    cache.write(URL, "ro", None, creds(3600))
    cache.write(URL, "admin", None, creds(3600))
    ro, admin = cache_file(URL, "ro", None), cache_file(URL, "admin", None)
    ro.write_bytes(admin.read_bytes())  # another role's ciphertext under this role's name
    assert cache.read(URL, "ro", None) is None
    blob = bytearray(admin.read_bytes())
    blob[-1] ^= 1
    admin.write_bytes(bytes(blob))
    assert cache.read(URL, "admin", None) is None


def test_clear_removes_every_cached_set() -> None:
    cache.write(URL, "ro", None, creds(3600))
    cache.write(URL, "ro", 900, creds(3600))
    assert cache.clear() == 2
    assert cache.read(URL, "ro", None) is None
