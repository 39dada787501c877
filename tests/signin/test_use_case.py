"""The sign-in use case on its own (no web layer), on SQLite and PostgreSQL: every refusal names its code and
is audited with it; a sign-in ends the browser's previous session; a TOTP step works once."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pyotp
import pytest
from sqlalchemy import select

from broker.aws.sts import Sts
from broker.connectors.local import hash_password
from broker.context import Context
from broker.errors import (
    AccessDenied,
    AuthenticationFailed,
    BrokerError,
    InvalidRequest,
    LoginRequired,
    MfaRequired,
    NotFound,
    RateLimited,
    ReplayDetected,
)
from broker.federation import Broker
from broker.identity import Identity, MfaEvidence, MfaLevel
from broker.services import build_services
from broker.settings import load_settings
from broker.signin.sessions import SignedIn
from broker.signin.step_up import PendingStepUp
from broker.signin.use_case import OidcSignedIn, SignIn
from broker.store import queries
from broker.store.db import Database
from broker.store.models import AuditEvent

PASSWORD = "correct horse battery staple"
TOTP_SECRET = pyotp.random_base32()
CTX = Context(client_ip="192.0.2.10", user_agent="pytest", request_id="r-1")
BROWSER = "browser-cookie-value"


@dataclass
class Rig:
    signin: SignIn
    broker: Broker
    db: Database


@pytest.fixture
def rig(make_config: Callable[..., dict[str, Any]]) -> Iterator[Rig]:
    config = make_config(
        identity_stores=[
            {
                "type": "local",
                "name": "breakglass",
                "accounts": [
                    {
                        "username": "alice",
                        "password_hash": hash_password(PASSWORD),
                        "totp_secret": TOTP_SECRET,
                        "email": "alice@example.com",
                        "groups": ["engineering"],
                    }
                ],
            },
            {
                "type": "oidc",
                "name": "corp",
                "issuer": "https://idp.example.test",
                "client_id": "broker",
                "client_secret": "not-used-here",
                "step_up_acr_values": {"phishing_resistant": ["phr"]},
                "domains": ["example.test"],
            },
        ],
        discovery={"enabled": True},
        rate_limits={"limits": {"login.principal": "2/minute"}},
    )
    settings = load_settings(None, **config)
    services = build_services(settings, sts=Sts(settings.aws))
    yield Rig(services.signin, services.broker, services.db)
    services.close()


def refusals(db: Database, event: str = "login") -> list[tuple[str | None, str]]:
    with db.transaction() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.event == event).order_by(AuditEvent.seq)).all()
        return [(row.principal, row.reason) for row in rows if row.outcome == "denied"]


def code(offset: float = 0) -> str:
    return pyotp.TOTP(TOTP_SECRET).at(time.time() + offset)


def local(rig: Rig, *, password: str = PASSWORD, totp: str | None = None, previous: str | None = None) -> SignedIn:
    return rig.signin.local(
        "breakglass", "alice", password, totp if totp is not None else code(), CTX, previous_session=previous
    )


def test_break_glass_sign_in_starts_a_session_and_audits_it(rig: Rig) -> None:
    signed_in = local(rig)
    current = rig.signin.sessions.current(signed_in.session_id)
    assert (current.identity.username, current.identity.break_glass) == ("alice", True)
    with rig.db.transaction() as session:
        [event] = queries.search_audit_events(session, event="login")
        assert (event.outcome, event.reason, event.detail["break_glass"]) == ("ok", "break_glass", True)


def test_a_sign_in_ends_the_session_the_browser_held_before(rig: Rig) -> None:
    first = local(rig, totp=code(-30))
    second = local(rig, previous=first.session_id)
    with pytest.raises(LoginRequired):
        rig.signin.sessions.current(first.session_id)
    assert rig.signin.sessions.current(second.session_id).identity.username == "alice"


@pytest.mark.parametrize(
    ("password", "totp", "reason"),
    [("wrong", None, "password_invalid"), (PASSWORD, "000000", "totp_invalid")],
)
def test_wrong_password_or_code_is_refused_and_audited(rig: Rig, password: str, totp: str | None, reason: str) -> None:
    if totp == "000000" and code() == "000000":
        totp = "111111"
    with pytest.raises(AuthenticationFailed) as refused:
        local(rig, password=password, totp=totp)
    assert refused.value.reason == reason
    assert refusals(rig.db) == [("alice", reason)]


def test_a_totp_code_works_once(rig: Rig) -> None:
    same = code()
    local(rig, totp=same)
    with pytest.raises(ReplayDetected) as refused:
        local(rig, totp=same)
    assert refused.value.reason == "totp_replay"
    assert refusals(rig.db) == [("alice@example.com", "totp_replay")]


def test_password_guessing_is_limited_per_account(rig: Rig) -> None:
    for _ in range(2):
        with pytest.raises(AuthenticationFailed):
            local(rig, password="wrong")
    with pytest.raises(RateLimited) as refused:
        local(rig, password="wrong")
    assert refused.value.code == "rate_limited"
    with rig.db.transaction() as session:
        limited = queries.search_audit_events(session, event="ratelimit")
        assert [(e.principal, e.reason) for e in limited] == [("alice", "rate_limited.login.principal")]


def test_a_disabled_person_gets_no_session(rig: Rig) -> None:
    local(rig, totp=code(-30))
    with rig.db.transaction() as session:
        principal = queries.touch_principal(session, identity=local_identity(), now=rig.broker.clock())
        queries.set_principal_disabled(session, principal_id=principal.id, disabled=True)
    with pytest.raises(AccessDenied) as refused:
        local(rig)
    assert refused.value.reason == "principal_disabled"
    assert refusals(rig.db) == [("alice@example.com", "principal_disabled")]


def local_identity() -> Identity:
    return Identity(subject="alice", issuer="http://127.0.0.1:8000", store="breakglass", username="alice")


def test_a_password_form_naming_another_kind_of_store_is_not_found(rig: Rig) -> None:
    with pytest.raises(NotFound):
        rig.signin.local("corp", "alice", PASSWORD, code(), CTX, previous_session=None)
    with pytest.raises(NotFound):
        rig.signin.ldap("breakglass", "alice", PASSWORD, CTX, previous_session=None)


def save_oidc_request(rig: Rig, state: str, *, store: str = "corp", expires_in: int = 600) -> None:
    now = rig.broker.clock()
    with rig.db.transaction() as session:
        queries.save_login_request(
            session,
            state_hmac=rig.broker.keys.mac("oidc-state", state),
            store=store,
            browser_hmac=rig.broker.keys.mac("browser", BROWSER),
            data={"nonce": "n", "code_verifier": "v", "return_to": "/", "pending": None},
            now=now,
            expires_at=now + timedelta(seconds=expires_in),
        )


@pytest.mark.parametrize(
    ("items", "browser", "error", "reason"),
    [
        ([("state", "s1"), ("state", "s1")], BROWSER, InvalidRequest, "oidc.params_invalid"),
        ([("state", "s1"), ("code", "x" * 4097)], BROWSER, InvalidRequest, "oidc.params_invalid"),
        ([("code", "c")], BROWSER, InvalidRequest, "oidc.state_missing"),
        ([("state", "never-issued"), ("code", "c")], BROWSER, ReplayDetected, "oidc.state_unknown"),
        ([("state", "s1"), ("code", "c")], "another-browser", AuthenticationFailed, "oidc.browser_mismatch"),
        ([("state", "s1"), ("code", "c")], None, AuthenticationFailed, "oidc.browser_mismatch"),
        ([("state", "expired"), ("code", "c")], BROWSER, AuthenticationFailed, "oidc.state_expired"),
    ],
)
def test_a_callback_that_does_not_answer_this_browsers_request_is_refused(
    rig: Rig, items: list[tuple[str, str]], browser: str | None, error: type[BrokerError], reason: str
) -> None:
    save_oidc_request(rig, "s1")
    save_oidc_request(rig, "expired", expires_in=-1)
    with pytest.raises(error) as refused:
        rig.signin.finish_oidc("corp", items, browser=browser, previous_session=None, ctx=CTX)
    assert refused.value.reason == reason
    assert refusals(rig.db) == [(None, reason)]


def test_a_callback_state_is_taken_once_and_only_by_its_own_store(rig: Rig) -> None:
    save_oidc_request(rig, "s1", store="other")
    with pytest.raises(InvalidRequest) as refused:
        rig.signin.finish_oidc("corp", [("state", "s1")], browser=BROWSER, previous_session=None, ctx=CTX)
    assert refused.value.reason == "oidc.state_store_mismatch"
    with pytest.raises(ReplayDetected) as again:
        rig.signin.finish_oidc("corp", [("state", "s1")], browser=BROWSER, previous_session=None, ctx=CTX)
    assert again.value.reason == "oidc.state_unknown"


def test_a_callback_for_an_unknown_store_is_refused_and_audited(rig: Rig) -> None:
    with pytest.raises(NotFound):
        rig.signin.finish_oidc("nope", [("state", "s1")], browser=BROWSER, previous_session=None, ctx=CTX)
    assert refusals(rig.db) == [(None, "not_found")]


def oidc_identity(level: MfaLevel) -> Identity:
    return Identity(
        subject="u-dana",
        issuer="https://idp.example.test",
        store="corp",
        username="dana",
        email="dana@example.com",
        groups=frozenset({"admins"}),
        mfa=MfaEvidence(level=level, methods=("pwd",)),
    )


def pending(action: str = "console", subject: str = "u-dana") -> PendingStepUp:
    return PendingStepUp(
        action=action,
        role="admin",
        duration_seconds=900,
        subject=subject,
        required=MfaLevel.PHISHING_RESISTANT,
        acr_values=("phr",),
    )


def test_the_pending_step_up_round_trips_through_its_stored_form() -> None:
    step_up = pending()
    assert PendingStepUp.from_json(step_up.to_json()) == step_up
    assert step_up.to_json()["required"] == "phishing_resistant"
    assert PendingStepUp.from_json(None) is None


def test_a_step_up_the_idp_did_not_meet_is_refused_and_the_session_stays(rig: Rig) -> None:
    identity = oidc_identity(MfaLevel.MFA)
    signed_in = rig.signin.sessions.start(identity, CTX, previous_session=None)
    done = OidcSignedIn(signed_in, "/", pending())
    with pytest.raises(MfaRequired) as refused:
        rig.signin.after_oidc(done, CTX)
    assert refused.value.reason == "oidc.step_up_not_met"
    assert refusals(rig.db, "credentials") == [("dana@example.com", "oidc.step_up_not_met")]
    assert rig.signin.sessions.current(signed_in.session_id).identity.subject == "u-dana"


def test_a_step_up_answered_by_someone_else_goes_back_where_it_was(rig: Rig) -> None:
    signed_in = rig.signin.sessions.start(oidc_identity(MfaLevel.NONE), CTX, previous_session=None)
    done = OidcSignedIn(signed_in, "/mfa", pending(subject="u-someone-else"))
    assert rig.signin.after_oidc(done, CTX) == "/mfa"
    assert refusals(rig.db, "credentials") == []


def test_discovery_refuses_an_unknown_domain_and_audits_the_domain_only(rig: Rig) -> None:
    with pytest.raises(InvalidRequest) as refused:
        rig.signin.discover("mallory@unknown.example", next_path="/", ctx=CTX)
    with rig.db.transaction() as session:
        [event] = queries.search_audit_events(session, event="login.discovery")
        assert (event.reason, event.detail["domain"]) == ("discovery.domain_unknown", "unknown.example")
    assert refused.value.reason == "discovery.domain_unknown"


def test_sign_out_ends_the_session_and_audits_it(rig: Rig) -> None:
    signed_in = local(rig)
    assert rig.signin.sign_out(signed_in.session_id, CTX) == "/signed-out"
    with pytest.raises(LoginRequired):
        rig.signin.sessions.current(signed_in.session_id)
    with rig.db.transaction() as session:
        assert [e.reason for e in queries.search_audit_events(session, event="logout")] == ["user_logout"]
