"""`broker signing-keys list|rotate [--revoke]` as docs/operations.md "Rotating signing keys now" runs them, on
SQLite and PostgreSQL: a token signed before `rotate` still verifies; after `rotate --revoke` the revoked key's
tokens are refused and it leaves /jwks.json."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from pydantic import SecretStr

from broker.app import create_app
from broker.errors import InvalidRequest
from broker.keys import Keys
from broker.oauth.tokens import TokenService
from broker.settings import Settings, load_settings
from broker.store.db import Database
from tests.conftest import SECRET
from tests.support.processes import LiveServer, broker_env

ROOT = Path(__file__).resolve().parents[2]
API = "https://api.internal"


def broker(config: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "broker.cli", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env=broker_env(COLUMNS="200", BROKER_OPERATOR="oncall"),
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
    return result.stdout


def keys(config: Path) -> list[tuple[str, str]]:
    return [(k["kid"], k["state"]) for k in json.loads(broker(config, "signing-keys", "list", "--json"))]


def served_kids(url: str) -> set[str]:
    time.sleep(1.1)  # the server re-reads the key table every key_cache_seconds (1 s here)
    return {k["kid"] for k in httpx.get(f"{url}/jwks.json", timeout=30).json()["keys"]}


def process(settings: Settings, database: Database) -> TokenService:
    """What another broker process holds: its own TokenService over the same database."""
    return TokenService(settings, db=database, keys=Keys(SecretStr(SECRET)))


def test_rotate_now_then_revoke(tmp_path: Path, db_url: str) -> None:
    raw = {
        "mode": "production",
        "public_url": "https://broker.example.com",
        "database_url": db_url,
        "secret_key": SECRET,
        "oauth": {"tokens": {"key_cache_seconds": 1}},
    }
    config = tmp_path / "broker.yaml"
    config.write_text(yaml.safe_dump(raw))
    settings = load_settings(config)
    database = Database(db_url)
    serving = process(settings, database)
    first = serving.issue_access_token(subject="s", audience=API, client_id="c")

    with LiveServer(create_app(settings)) as server:
        # Step 1.
        assert keys(config) == [(first.kid, "current")]
        assert served_kids(server.url) == {first.kid}
        # Step 2a: rotate.
        rotated = broker(config, "signing-keys", "rotate", "--as", "oncall")
        second = rotated.split("New signing key ", 1)[1].split(" ", 1)[0]
        assert f"Old key {first.kid} no longer signs; it stays in /jwks.json until" in rotated
        assert keys(config) == [(second, "current"), (first.kid, "retired")]
        assert served_kids(server.url) == {first.kid, second}
        assert serving.verify_access_token(first.token, audience=API)["jti"] == first.jti
        time.sleep(1.1)
        signed_by_second = serving.issue_access_token(subject="s", audience=API, client_id="c")
        assert signed_by_second.kid == second

        # A process that loaded the second key and keeps it cached while the operator revokes it.
        stale = process(settings, database)
        assert stale.verify_access_token(signed_by_second.token, audience=API)["jti"] == signed_by_second.jti
        # Step 2b: revoke.
        revoked = broker(config, "signing-keys", "rotate", "--revoke", "--as", "oncall")
        third = revoked.split("New signing key ", 1)[1].split(" ", 1)[0]
        assert f"Old key {second} revoked: removed from /jwks.json and its tokens refused from now on." in revoked
        for verifier in (stale, serving, process(settings, database)):
            with pytest.raises(InvalidRequest) as info:
                verifier.verify_access_token(signed_by_second.token, audience=API)
            assert (info.value.code, info.value.reason) == ("invalid_request", "broker_token_key_revoked")
        # Step 3: the first key is still published for its live tokens; the revoked one is not.
        assert keys(config) == [(third, "current"), (second, "revoked"), (first.kid, "retired")]
        assert served_kids(server.url) == {first.kid, third}
        assert serving.verify_access_token(first.token, audience=API)["jti"] == first.jti

    events = json.loads(broker(config, "audit", "search", "--event", "signing_key_rotate", "--json"))
    assert sorted((e["reason"], e["principal"]) for e in events) == [
        ("revoked", "operator:oncall"),
        ("rotated", "operator:oncall"),
    ]
    assert "Audit chain intact" in broker(config, "audit", "verify")
    database.dispose()
