"""docs/operations.md, "Rotating secret_key" and "Moving MFA to encryption_keys", step by step on a live broker.

Before the rotation the broker holds a browser session, a CLI refresh token, its signing key, an enrolled TOTP
factor and an audit trail. Each runbook step is run as written (the configuration edited, `broker ...` run
as a program); afterwards everything still works and `broker audit verify` passes over the whole trail.
Removing the old key before re-encrypting is refused by `config check` and makes /readyz not ready.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
import yaml

from broker.app import create_app
from broker.settings import load_settings
from tests.support.cli_broker import TOTP_SECRET as BREAK_GLASS_TOTP
from tests.support.cli_broker import hidden_fields, local_store
from tests.support.portal import csrf_from, login_local
from tests.support.processes import LiveServer, broker_env, free_port

ROOT = Path(__file__).resolve().parent.parent
OLD = "old-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
NEW = "new-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
MFA_KEY = "mfa-key-0123456789-abcdefghijklmnopqrstuvwxyz"
ENV = {"SECRET_KEY_K0": OLD, "SECRET_KEY_K1": NEW, "MFA_KEY_1": MFA_KEY}
HTML = {"Accept": "text/html"}
VERIFIER = "v" * 43


class Clock:
    """Real time plus an offset, so each TOTP code falls in a time step of its own."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def next_step(self) -> datetime:
        self.offset += timedelta(seconds=30)
        return self()


def broker(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a runbook command exactly as an operator does."""
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env=broker_env(**ENV),
    )


@pytest.fixture
def setup(
    make_config: Callable[..., dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, Any], Path]:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    port = free_port()
    config = make_config(identity_stores=[local_store()], public_url=f"http://127.0.0.1:{port}")
    config["secret_key"] = "env:SECRET_KEY_K0"
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(config))
    return config, path


@contextlib.contextmanager
def serving(path: Path, clock: Clock) -> Iterator[str]:
    """A broker process restarted with the configuration file as it is now."""
    settings = load_settings(path)
    port = int(settings.public_url.rsplit(":", 1)[1])
    with LiveServer(create_app(settings, clock=clock), port=port) as server:
        yield server.url


def write(path: Path, config: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(config))


def sign_in(url: str, clock: Clock) -> httpx.Client:
    client = httpx.Client(base_url=url, follow_redirects=False, timeout=30)
    code = pyotp.TOTP(BREAK_GLASS_TOTP).at(clock.next_step())
    response = login_local(
        client, store="breakglass", username="alice", password="correct horse battery staple", code=code
    )
    assert response.status_code == 303, response.text
    return client


def csrf(client: httpx.Client, path: str = "/mfa") -> str:
    page = client.get(path, headers=HTML)
    assert page.status_code == 200, page.text
    return csrf_from(page.text)


def enrol_totp(client: httpx.Client, clock: Clock) -> str:
    page = client.post("/mfa/totp", data={"csrf": csrf(client), "name": "phone"}, headers=HTML)
    assert page.status_code == 200, page.text
    secret = re.search(r'<code id="totp-secret">([A-Z2-7]+)</code>', page.text)
    factor_id = re.search(r'name="factor_id" value="(\d+)"', page.text)
    assert secret and factor_id
    code = pyotp.TOTP(secret.group(1)).at(clock.next_step())
    done = client.post(
        "/mfa/totp/confirm",
        data={"csrf": csrf_from(page.text), "factor_id": factor_id.group(1), "code": code},
        headers=HTML,
    )
    assert done.status_code == 200, done.text
    return secret.group(1)


def totp_works(client: httpx.Client, clock: Clock, secret: str) -> bool:
    code = pyotp.TOTP(secret).at(clock.next_step())
    answer = client.post("/mfa/verify/totp", data={"csrf": csrf(client, "/"), "code": code}, headers=HTML)
    return answer.status_code == 303


def refresh_token(url: str, web: httpx.Client) -> str:
    challenge = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()
    redirect = "http://127.0.0.1:7001/callback"
    query = {
        "response_type": "code",
        "client_id": "broker-cli",
        "redirect_uri": redirect,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "s1",
    }
    page = web.get("/oauth2/authorize", params=query)
    assert page.status_code == 200, page.text
    answer = web.post("/oauth2/authorize", data={**hidden_fields(page.text), "decision": "allow"})
    code = re.search(r"[?&]code=([^&]+)", answer.headers["location"])
    assert code
    tokens = httpx.post(
        f"{url}/oauth2/token",
        data={
            "client_id": "broker-cli",
            "grant_type": "authorization_code",
            "code": code.group(1),
            "redirect_uri": redirect,
            "code_verifier": VERIFIER,
        },
    )
    assert tokens.status_code == 200, tokens.text
    return str(tokens.json()["refresh_token"])


def refreshed(url: str, token: str) -> httpx.Response:
    data = {"client_id": "broker-cli", "grant_type": "refresh_token", "refresh_token": token}
    return httpx.post(f"{url}/oauth2/token", data=data)


def signed_in(client: httpx.Client) -> bool:
    return client.get("/", headers=HTML).status_code == 200


def test_rotating_secret_key_by_the_runbook(setup: tuple[dict[str, Any], Path]) -> None:
    config, path = setup
    clock = Clock()
    with serving(path, clock) as url:
        web = sign_in(url, clock)
        factor = enrol_totp(web, clock)
        refresh = refresh_token(url, web)
        assert httpx.get(f"{url}/jwks.json").status_code == 200
        assert totp_works(web, clock, factor)

    # Step 2: the current secret becomes k0, a new k1 is listed first.
    del config["secret_key"]
    config["secret_keys"] = [{"id": "k1", "value": "env:SECRET_KEY_K1"}, {"id": "k0", "value": "env:SECRET_KEY_K0"}]
    write(path, config)
    # Step 3.
    check = broker("config", "check", str(path))
    assert check.returncode == 0, check.stderr
    # Step 4: restart. Sessions, refresh tokens, signing keys and factors keep working.
    with serving(path, clock) as url:
        assert signed_in(web)
        answer = refreshed(url, refresh)
        assert answer.status_code == 200, answer.text
        refresh = answer.json()["refresh_token"]
        assert httpx.get(f"{url}/jwks.json").status_code == 200
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200, ready.text
        # A factor used now is also re-encrypted under k1 on the way.
        assert totp_works(web, clock, factor)

    # What removing k0 now (before re-encrypting) would do: config check names it, /readyz is not ready.
    early = tmp_config(path, {**config, "secret_keys": config["secret_keys"][:1]})
    refused = broker("config", "check", str(early))
    assert refused.returncode == 1
    assert "signing key" in refused.stderr and "cannot be decrypted" in " ".join(refused.stderr.split())
    assert "TOTP" not in refused.stderr
    with serving(early, clock) as url:
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503 and ready.json()["keys"] == "undecryptable"
        assert OLD not in ready.text and NEW not in ready.text
        assert httpx.get(f"{url}/jwks.json").status_code == 503

    # Step 5: re-encrypt and re-seal under k1; step 6: check.
    moved = broker("keys", "re-encrypt", "-c", str(path))
    assert moved.returncode == 0, moved.stderr
    assert "re-encrypted 1 signing key(s) and 0 TOTP secret(s)" in " ".join(moved.stdout.split())
    verified = broker("audit", "verify", "-c", str(path))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    status = broker("keys", "status", "-c", str(path))
    assert status.returncode == 0, status.stderr
    assert "Everything is under the newest key" in status.stdout

    # Step 7: remove k0 and restart.
    config["secret_keys"] = config["secret_keys"][:1]
    write(path, config)
    check = broker("config", "check", str(path))
    assert check.returncode == 0, check.stderr
    with serving(path, clock) as url:
        assert httpx.get(f"{url}/jwks.json").status_code == 200
        assert httpx.get(f"{url}/readyz").status_code == 200
        # The refresh token rotated after the restart is under k1; the browser session's id HMAC is under
        # k0, so it ends with k0 (the runbook says so, and `keys status` showed when).
        assert refreshed(url, refresh).status_code == 200
        assert not signed_in(web)
        web = sign_in(url, clock)
        assert totp_works(web, clock, factor)
    verified = broker("audit", "verify", "-c", str(path))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_moving_mfa_to_encryption_keys_by_the_runbook(setup: tuple[dict[str, Any], Path]) -> None:
    config, path = setup
    clock = Clock()
    with serving(path, clock) as url:
        web = sign_in(url, clock)
        factor = enrol_totp(web, clock)

    # Step 1: list an explicit key; the factor enrolled under the default key is still readable.
    config["mfa"] = {"encryption_keys": ["env:MFA_KEY_1"]}
    write(path, config)
    assert broker("config", "check", str(path)).returncode == 0
    with serving(path, clock) as url:
        assert httpx.get(f"{url}/readyz").status_code == 200
    # Step 2: move every factor to it.
    rotated = broker("mfa", "rotate-key", "-c", str(path))
    assert rotated.returncode == 0, rotated.stderr
    assert "Re-encrypted 1 TOTP secret(s)" in rotated.stdout
    status = broker("keys", "status", "-c", str(path))
    assert status.returncode == 0 and "mfa.encryption_keys[0]" in status.stdout
    with serving(path, clock) as url:
        assert totp_works(web, clock, factor)
        assert httpx.get(f"{url}/readyz").status_code == 200
    assert broker("audit", "verify", "-c", str(path)).returncode == 0

    # Dropping the explicit key after moving factors to it: named, not a traceback.
    config["mfa"] = {}
    write(path, config)
    refused = broker("config", "check", str(path))
    assert refused.returncode == 1 and "1 TOTP factor(s) are encrypted under a key" in refused.stderr
    again = broker("mfa", "rotate-key", "-c", str(path))
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert "cannot be decrypted with the configured keys" in again.stderr


def tmp_config(path: Path, config: dict[str, Any], name: str = "broker-without-k0.yaml") -> Path:
    other = path.with_name(name)
    write(other, config)
    return other


def test_a_rolling_restart_deploys_the_keyring_in_two_steps(setup: tuple[dict[str, Any], Path]) -> None:
    """The note under step 4: with k1 first at once, a process still on the old file does not know a session
    started under k1; deployed as [k0, k1] first, every process reads what any of them wrote."""
    config, path = setup
    clock = Clock()
    keyring = {key: value for key, value in config.items() if key != "secret_key"}
    k0 = {"id": "k0", "value": "env:SECRET_KEY_K0"}
    k1 = {"id": "k1", "value": "env:SECRET_KEY_K1"}
    old = tmp_config(path, config, "old.yaml")
    learning = tmp_config(path, {**keyring, "secret_keys": [k0, k1]}, "learning.yaml")
    rotated = tmp_config(path, {**keyring, "secret_keys": [k1, k0]}, "rotated.yaml")

    # In one step: a session started by a restarted process is unknown to one still on the old file.
    with serving(rotated, clock) as url:
        web = sign_in(url, clock)
    with serving(old, clock):
        assert not signed_in(web)

    # In two steps: while processes learn k1, k0 still writes, so old and new processes share sessions.
    with serving(learning, clock) as url:
        web = sign_in(url, clock)
    for step in (old, learning, rotated):
        with serving(step, clock):
            assert signed_in(web)
    verified = broker("audit", "verify", "-c", str(rotated))
    assert verified.returncode == 0, verified.stdout + verified.stderr
