"""Pure parts of broker MFA: evidence freshness in policy, lockout rules, secret sealing, recovery codes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from broker.errors import ServiceUnavailable
from broker.identity import Channel, Factor, Identity, MfaEvidence, MfaLevel
from broker.mfa import lockout, recovery, totp
from broker.mfa.crypto import SecretBox
from broker.policy import AccessRequest, decide
from broker.settings import RoleConfig

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ROLE = RoleConfig(
    name="deploy",
    role_arn="arn:aws:iam::123456789012:role/Deploy",
    grant=[{"groups": ["eng"]}],  # type: ignore[list-item]
    mfa=MfaLevel.MFA,
    mfa_max_age_minutes=10,
)
ADMIN = RoleConfig(
    name="admin",
    role_arn="arn:aws:iam::123456789012:role/Admin",
    grant=[{"groups": ["eng"]}],  # type: ignore[list-item]
    mfa=MfaLevel.PHISHING_RESISTANT,
)


def person(evidence: MfaEvidence) -> Identity:
    return Identity(subject="s", issuer="i", store="corp", username="u", groups=frozenset({"eng"}), mfa=evidence)


def at(minutes_ago: int) -> datetime:
    return NOW - timedelta(minutes=minutes_ago)


@pytest.mark.parametrize(
    ("evidence", "role", "reason"),
    [
        (MfaEvidence(MfaLevel.MFA, ("mfa",), at(5)), ROLE, "granted"),
        (MfaEvidence(MfaLevel.MFA, ("mfa",), at(11)), ROLE, "mfa_stale"),
        (MfaEvidence(MfaLevel.MFA, ("mfa",), None), ROLE, "mfa_stale"),
        (MfaEvidence(MfaLevel.NONE, ("pwd",), at(1)), ROLE, "mfa_insufficient"),
        # IdP said password only; a broker TOTP two minutes ago makes it MFA, fresh.
        (
            MfaEvidence(MfaLevel.NONE, ("pwd",), at(30)).with_factor(Factor("totp", MfaLevel.MFA, at(2)), "otp"),
            ROLE,
            "granted",
        ),
        # Old IdP MFA plus an old broker factor: stale.
        (
            MfaEvidence(MfaLevel.MFA, ("mfa",), at(30)).with_factor(Factor("totp", MfaLevel.MFA, at(20)), "otp"),
            ROLE,
            "mfa_stale",
        ),
        # TOTP never reaches phishing-resistant; a user-verified security key does.
        (
            MfaEvidence(MfaLevel.MFA, ("mfa",), at(1)).with_factor(Factor("totp", MfaLevel.MFA, at(1)), "otp"),
            ADMIN,
            "mfa_insufficient",
        ),
        (
            MfaEvidence(MfaLevel.MFA, ("mfa",), at(1)).with_factor(
                Factor("webauthn", MfaLevel.PHISHING_RESISTANT, at(1)), "hwk"
            ),
            ADMIN,
            "granted",
        ),
    ],
)
def test_decide_reads_every_factor_with_its_time(evidence: MfaEvidence, role: RoleConfig, reason: str) -> None:
    decision = decide(person(evidence), [role], AccessRequest(role=role.name, channel=Channel.CLI), NOW)
    assert decision.reason == reason


def test_evidence_round_trips_through_the_session_row() -> None:
    evidence = MfaEvidence(MfaLevel.NONE, ("pwd",), at(30)).with_factor(
        Factor("webauthn", MfaLevel.PHISHING_RESISTANT, at(1)), "hwk"
    )
    identity = person(evidence)
    again = Identity.from_json(identity.to_json())
    assert again == identity
    assert again.mfa.level is MfaLevel.PHISHING_RESISTANT and again.mfa.methods == ("pwd", "hwk")
    # The IdP's own proof is kept as a factor once broker factors exist (here: none, since it asserted none).
    assert [f.method for f in again.mfa.factors] == ["webauthn"]
    idp_mfa = MfaEvidence(MfaLevel.MFA, ("mfa",), at(3)).with_factor(Factor("totp", MfaLevel.MFA, at(1)), "otp")
    assert [f.method for f in idp_mfa.factors] == ["idp", "totp"]


def test_lockout_backs_off_and_forgets_old_failures() -> None:
    rule = lockout.LockoutRule(3, timedelta(minutes=15), timedelta(seconds=60), timedelta(seconds=200))
    counter = SimpleNamespace(failures=0, lockouts=0, last_failure_at=None, locked_until=None)
    assert lockout.fail(counter, rule, NOW) is None  # type: ignore[arg-type]
    # A failure outside the window starts counting again.
    assert lockout.fail(counter, rule, NOW + timedelta(minutes=20)) is None  # type: ignore[arg-type]
    assert counter.failures == 1
    t = NOW + timedelta(minutes=20)
    lockout.fail(counter, rule, t)  # type: ignore[arg-type]
    assert lockout.fail(counter, rule, t) == t + timedelta(seconds=60)  # type: ignore[arg-type]
    assert lockout.locked_until(counter, t) is not None  # type: ignore[arg-type]
    later = t + timedelta(seconds=61)
    assert lockout.expire(counter, later)  # type: ignore[arg-type]
    for _ in range(3):
        end = lockout.fail(counter, rule, later)  # type: ignore[arg-type]
    assert end == later + timedelta(seconds=120)
    counter.locked_until = None
    for _ in range(3):
        end = lockout.fail(counter, rule, later)  # type: ignore[arg-type]
    assert end == later + timedelta(seconds=200)  # capped


def test_secret_box_rotates_and_binds_the_owner() -> None:
    old = SecretBox([("old", b"old-key-0123456789-0123456789-0123456789")])
    sealed = old.seal("JBSWY3DPEHPK3PXP", context="mfa-totp:1")
    rotated = SecretBox(
        [("new", b"new-key-0123456789-0123456789-0123456789"), ("old", b"old-key-0123456789-0123456789-0123456789")]
    )
    assert rotated.open(sealed, context="mfa-totp:1") == "JBSWY3DPEHPK3PXP"
    assert rotated.needs_rotation(sealed) and not rotated.needs_rotation(rotated.seal("x", context="c"))
    with pytest.raises(ServiceUnavailable):
        rotated.open(sealed, context="mfa-totp:2")  # copied to another principal's row
    with pytest.raises(ServiceUnavailable):
        SecretBox([("new", b"new-key-0123456789-0123456789-0123456789")]).open(sealed, context="mfa-totp:1")


def test_totp_drift_is_one_step_either_side() -> None:
    import pyotp

    secret = totp.new_secret()
    now = NOW.timestamp()
    step = int(now // 30)
    for offset in (-1, 0, 1):
        assert totp.matching_step(secret, pyotp.TOTP(secret).at(now + 30 * offset), now=now) == step + offset
    assert totp.matching_step(secret, pyotp.TOTP(secret).at(now + 60), now=now) is None
    assert totp.matching_step(secret, "12345", now=now) is None


def test_recovery_codes_normalize() -> None:
    [code] = recovery.generate(1)
    assert recovery.normalize(code.upper().replace("-", " ")) == code.replace("-", "")
    assert recovery.normalize("0000-0000-0000") is None and recovery.normalize("x" * 64) is None
