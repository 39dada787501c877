"""An operator's MFA reset ends the person's sessions and CLI sign-ins, on SQLite and PostgreSQL.

Bob is signed in over real HTTP (and has a CLI sign-in); the reset is approved through the use case by an
operator whose identity carries a fresh phishing-resistant proof (the browser flow is in
``test_webauthn.py``).
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
import pyotp
from sqlalchemy import select

from broker.aws.sts import Sts
from broker.context import Context
from broker.identity import MfaEvidence, MfaLevel
from broker.mfa.service import Holder
from broker.services import build_services
from broker.settings import load_settings
from broker.store.db import Database
from broker.store.models import Principal, RefreshFamily
from tests.mfa.conftest import BREAK_GLASS_TOTP, HTML, PASSWORD, Running, sign_in


def principal_id(db: Database, username: str) -> int:
    with db.transaction() as s:
        return s.scalars(select(Principal.id).where(Principal.username == username)).one()


def test_an_operator_reset_ends_the_persons_sessions_and_cli_sign_ins(client: httpx.Client, running: Running) -> None:
    sign_in(client, running, "bob")
    assert client.get("/", headers=HTML).status_code == 200
    settings = load_settings(None, **running.config)
    services = build_services(settings, sts=Sts(settings.aws))
    db = services.db
    try:
        bob = principal_id(db, "bob")
        now = datetime.now(UTC)
        family = str(uuid.uuid4())
        with db.transaction() as s:
            s.add(
                RefreshFamily(
                    id=family,
                    principal_id=bob,
                    client_id="broker-cli",
                    grant_type="device_code",
                    identity={},
                    created_at=now,
                    expires_at=now + timedelta(hours=8),
                )
            )
        with httpx.Client(base_url=running.url, follow_redirects=False, timeout=30) as alice_browser:
            sign_in(alice_browser, running, "alice")
        login = services.broker.local_connectors["breakglass"].authenticate(
            "alice", PASSWORD, pyotp.TOTP(BREAK_GLASS_TOTP).now()
        )
        # The operator confirmed with a security key just now (the browser flow proves this for real).
        fresh = MfaEvidence(MfaLevel.PHISHING_RESISTANT, ("hwk",), datetime.now(UTC))
        operator = Holder(principal_id(db, "alice"), replace(login.identity, mfa=fresh), session_hmac="")
        pending = services.mfa.request_reset("bob@example.com", requested_by="pytest")
        token = pending.url.rsplit("/", 1)[1]
        assert services.mfa.approve_reset(operator, Context(), token=token) == "bob@example.com"

        # Bob's browser session and his CLI sign-in are over.
        assert client.get("/", headers={"Accept": "application/json"}).json()["error"] == "login_required"
        with db.transaction() as s:
            row = s.get(RefreshFamily, family)
            assert row is not None and row.revoked_at is not None and row.revoked_reason == "mfa_reset"
        [event] = [e for e in running.audit("mfa.reset") if e.outcome == "ok"]
        assert (event.reason, event.principal, event.detail["sessions_ended"]) == (
            "mfa.operator_reset",
            "alice@example.com",
            2,
        )
    finally:
        db.dispose()
