"""TOTP at the broker over real HTTP: enrolment, step-up, replay, lockout, recovery codes, freshness.

Peers: the broker on a loopback socket with an injected clock, moto's STS, SQLite or PostgreSQL. Codes are
made by pyotp in the test from the secret the enrolment page shows, as an authenticator app would.
"""

from __future__ import annotations

import httpx
from sqlalchemy import select

from broker.store.db import Database
from broker.store.models import Issuance, MfaFactor, MfaRecoveryCode
from tests.mfa.conftest import HTML, Running, csrf, enrol_totp, post_form, sign_in


def test_enrol_shows_secret_once_stores_it_encrypted_and_gives_recovery_codes(
    client: httpx.Client, running: Running
) -> None:
    sign_in(client, running)
    secret, codes = enrol_totp(client, running)
    assert len(codes) == 10 and len(set(codes)) == 10
    with Database(running.db_url).transaction() as s:
        [factor] = s.scalars(select(MfaFactor)).all()
        hashes = [r.code_hmac for r in s.scalars(select(MfaRecoveryCode)).all()]
        assert factor.kind == "totp" and factor.confirmed_at is not None
        assert factor.secret_encrypted and secret not in factor.secret_encrypted
        assert factor.secret_encrypted.startswith("v1.")
    assert not any(code.replace("-", "") in h for code in codes for h in hashes)
    # The page lists it; the secret is never shown again.
    page = client.get("/mfa", headers=HTML)
    assert "phone" in page.text and secret not in page.text
    [enrolled] = running.audit("mfa.enrol")
    assert (enrolled.outcome, enrolled.reason) == ("ok", "mfa.totp_confirmed")
    assert secret not in str([e.detail for e in running.audit()])


def test_wrong_first_code_does_not_confirm(client: httpx.Client, running: Running) -> None:
    sign_in(client, running)
    page = client.post("/mfa/totp", data={"csrf": csrf(client)}, headers=HTML)
    factor_id = page.text.split('name="factor_id" value="', 1)[1].split('"', 1)[0]
    bad = client.post(
        "/mfa/totp/confirm", data={"csrf": csrf(client), "factor_id": factor_id, "code": "000000"}, headers=HTML
    )
    assert bad.status_code == 401
    with Database(running.db_url).transaction() as s:
        [factor] = s.scalars(select(MfaFactor)).all()
        assert factor.confirmed_at is None
    [event] = running.audit("mfa.verify")
    assert (event.outcome, event.reason) == ("denied", "mfa.totp_invalid")


def test_step_up_with_code_and_replay_refused(client: httpx.Client, running: Running) -> None:
    sign_in(client, running)
    secret, _ = enrol_totp(client, running)
    running.clock.advance(seconds=30)
    code = running.code(secret)
    assert post_form(client, "/mfa/verify/totp", code=code).status_code == 303
    # The same code again, inside its window: refused, audited once, with a machine reason.
    again = post_form(client, "/mfa/verify/totp", code=code)
    assert again.status_code == 400, again.text
    denied = [e for e in running.audit("mfa.verify") if e.outcome == "denied"]
    assert [e.reason for e in denied] == ["mfa_totp_replay"]
    # The next step's code works (one step of drift either side is accepted).
    assert post_form(client, "/mfa/verify/totp", code=running.code(secret, steps=1)).status_code == 303


def test_lockout_refuses_the_correct_code_then_unlocks_with_backoff(client: httpx.Client, running: Running) -> None:
    sign_in(client, running)
    secret, _ = enrol_totp(client, running)
    running.clock.advance(seconds=60)
    for _ in range(4):
        assert post_form(client, "/mfa/verify/totp", code="123456").status_code == 401
    fifth = post_form(client, "/mfa/verify/totp", code="123456")
    assert fifth.status_code == 429 and 55 <= int(fifth.headers["retry-after"]) <= 61
    # Locked: the right code is refused too, and not spent.
    locked = post_form(client, "/mfa/verify/totp", code=running.code(secret))
    assert locked.status_code == 429 and "retry-after" in locked.headers
    reasons = [(e.event, e.outcome, e.reason) for e in running.audit() if e.event.startswith("mfa.")][2:]
    assert reasons == [
        *[("mfa.verify", "denied", "mfa.totp_invalid")] * 4,
        ("mfa.lockout", "denied", "mfa.locked"),
        ("mfa.verify", "denied", "mfa.locked_out"),
    ]
    # After the lockout the correct code works; the unlock is audited.
    running.clock.advance(seconds=61)
    assert post_form(client, "/mfa/verify/totp", code=running.code(secret)).status_code == 303
    [unlock] = running.audit("mfa.unlock")
    assert (unlock.outcome, unlock.reason, unlock.detail["scope"]) == ("ok", "mfa.lockout_expired", "principal")
    # A success ends the backoff; a second run of failures locks for the base time again.
    running.clock.advance(seconds=30)
    for _ in range(4):
        post_form(client, "/mfa/verify/totp", code="123456")
    again = post_form(client, "/mfa/verify/totp", code="123456")
    assert again.status_code == 429 and int(again.headers["retry-after"]) <= 61


def test_backoff_doubles_while_guessing_continues(client: httpx.Client, running: Running) -> None:
    sign_in(client, running)
    enrol_totp(client, running)
    for _ in range(5):
        post_form(client, "/mfa/verify/totp", code="123456")
    running.clock.advance(seconds=61)
    for _ in range(4):
        assert post_form(client, "/mfa/verify/totp", code="123456").status_code == 401
    second = post_form(client, "/mfa/verify/totp", code="123456")
    assert second.status_code == 429 and 115 <= int(second.headers["retry-after"]) <= 121


def test_recovery_code_works_once(client: httpx.Client, running: Running) -> None:
    sign_in(client, running)
    _, codes = enrol_totp(client, running)
    assert post_form(client, "/mfa/verify/recovery", code=codes[3].upper()).status_code == 303
    reused = post_form(client, "/mfa/verify/recovery", code=codes[3])
    assert reused.status_code == 401
    assert [(e.outcome, e.reason) for e in running.audit("mfa.verify")][-2:] == [
        ("ok", "mfa.recovery_code"),
        ("denied", "mfa.recovery_invalid"),
    ]
    assert "Recovery codes left: <strong>9</strong>" in client.get("/mfa", headers=HTML).text


def test_phishing_resistant_role_refuses_a_totp_only_session(client: httpx.Client, running: Running) -> None:
    sign_in(client, running)
    secret, _ = enrol_totp(client, running)
    running.clock.advance(seconds=30)
    assert post_form(client, "/mfa/verify/totp", code=running.code(secret)).status_code == 303
    portal = client.get("/", headers=HTML).text
    assert "needs phishing-resistant sign-in" in portal and '<a href="/mfa">add a security key</a>' in portal
    # Straight to issuance after the first factor (and TOTP): a clear 403, audited, nothing issued.
    refused = post_form(client, "/credentials", role="admin")
    assert refused.status_code == 403 and "phishing-resistant" in refused.text
    [denied] = [e for e in running.audit("credentials") if e.outcome == "denied"]
    assert denied.reason == "mfa_insufficient" and denied.detail["role"] == "admin"
    with Database(running.db_url).transaction() as s:
        assert s.scalars(select(Issuance)).all() == []


def test_fresh_mfa_role_reprompts_after_its_window(client: httpx.Client, running: Running) -> None:
    sign_in(client, running)
    secret, _ = enrol_totp(client, running)
    # Fresh: the sign-in (and the enrolment) are seconds old.
    assert post_form(client, "/credentials", role="deploy", duration="900").status_code == 200
    running.clock.advance(minutes=6)
    portal = client.get("/", headers=HTML).text
    assert "needs mfa sign-in within the last 5 minutes" in portal
    assert "/mfa/verify?role=deploy" in portal
    stale = post_form(client, "/credentials", role="deploy", duration="900")
    assert stale.status_code == 403
    assert running.audit("credentials")[-1].reason == "mfa_stale"
    # The verify page says why; a code makes the session fresh again.
    why = client.get("/mfa/verify", params={"role": "deploy"}, headers=HTML).text
    assert "within the last 5 minutes" in why
    assert post_form(client, "/mfa/verify/totp", code=running.code(secret)).status_code == 303
    assert post_form(client, "/credentials", role="deploy", duration="900").status_code == 200


def test_changing_factors_needs_a_recent_factor(client: httpx.Client, running: Running) -> None:
    sign_in(client, running)
    secret, _ = enrol_totp(client, running)
    running.clock.advance(minutes=16)
    refused = client.post("/mfa/totp", data={"csrf": csrf(client)}, headers=HTML)
    assert refused.status_code == 403
    assert running.audit("mfa.manage")[-1].reason == "mfa.manage_requires_factor"
    assert post_form(client, "/mfa/verify/totp", code=running.code(secret)).status_code == 303
    assert client.post("/mfa/totp", data={"csrf": csrf(client)}, headers=HTML).status_code == 200


def test_forms_need_csrf(client: httpx.Client, running: Running) -> None:
    sign_in(client, running)
    assert client.post("/mfa/totp", data={"csrf": "x"}, headers=HTML).status_code == 403
    assert client.post("/api/mfa/webauthn/register/options", json={}).status_code == 403
