"""broker.store.mfa on SQLite and PostgreSQL: factors, recovery codes spent once, lockout counters."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from broker.store import mfa
from broker.store.db import Database
from broker.store.models import MfaFactor, MfaLockout, MfaRecoveryCode
from tests.store.conftest import NOW, assert_refused_by_database


def test_factor_lifecycle(database: Database, add_principal: Callable[..., int]) -> None:
    pid = add_principal()
    with database.transaction() as s:
        totp = mfa.add_mfa_factor(s, principal_id=pid, kind="totp", name="phone", created_at=NOW, secret_encrypted="e1")
        key = mfa.add_mfa_factor(
            s, principal_id=pid, kind="webauthn", name="key", created_at=NOW, confirmed_at=NOW, credential_id="cred",
            public_key="pk", sign_count=5, user_verified=True,
        )  # fmt: skip
        assert totp is not None and key is not None
        totp_id, key_id = totp.id, key.id
    with database.transaction() as s:
        assert [f.id for f in mfa.list_mfa_factors(s, principal_id=pid)] == [key_id]
        assert [f.id for f in mfa.list_mfa_factors(s, principal_id=pid, confirmed_only=False)] == [totp_id, key_id]
        assert [f.id for f in mfa.list_totp_factors(s)] == [totp_id]
        found = mfa.get_mfa_factor_by_credential(s, credential_id="cred")
        assert found is not None and found.id == key_id
        assert mfa.get_mfa_factor_by_credential(s, credential_id="other") is None
        assert mfa.get_mfa_factor(s, principal_id=pid, factor_id=key_id) is not None
        assert mfa.get_mfa_factor(s, principal_id=pid + 1000, factor_id=key_id) is None
        mfa.used_mfa_factor(s, factor_id=totp_id, now=NOW + timedelta(minutes=1), secret_encrypted="e2")
    with database.transaction() as s:
        used = mfa.get_mfa_factor(s, principal_id=pid, factor_id=totp_id)
        assert used is not None
        assert (used.confirmed_at, used.last_used_at, used.secret_encrypted) == (NOW + timedelta(minutes=1),) * 2 + (
            "e2",
        )
        mfa.used_mfa_factor(s, factor_id=totp_id, now=NOW + timedelta(minutes=2))
        mfa.set_factor_secret(s, factor_id=totp_id, secret_encrypted="e3")
    with database.transaction() as s:
        used = mfa.get_mfa_factor(s, principal_id=pid, factor_id=totp_id)
        # Confirmed once, at first use; the secret changes only when asked.
        assert used is not None and (used.confirmed_at, used.secret_encrypted) == (NOW + timedelta(minutes=1), "e3")
        assert not mfa.delete_mfa_factor(s, principal_id=pid + 1000, factor_id=key_id)
        assert mfa.delete_mfa_factor(s, principal_id=pid, factor_id=key_id)
    with database.transaction() as s:
        assert not mfa.delete_mfa_factor(s, principal_id=pid, factor_id=key_id)


def test_names_and_credentials_are_unique(database: Database, add_principal: Callable[..., int]) -> None:
    ann, bob = add_principal("u1"), add_principal("u2")
    with database.transaction() as s:
        assert mfa.add_mfa_factor(s, principal_id=ann, kind="totp", name="phone", created_at=NOW) is not None
        assert mfa.add_mfa_factor(s, principal_id=ann, kind="totp", name="phone", created_at=NOW) is None
        assert mfa.add_mfa_factor(s, principal_id=bob, kind="totp", name="phone", created_at=NOW) is not None
        assert mfa.add_mfa_factor(s, principal_id=ann, kind="webauthn", name="k", created_at=NOW, credential_id="c")
        assert (
            mfa.add_mfa_factor(s, principal_id=bob, kind="webauthn", name="k", created_at=NOW, credential_id="c")
            is None
        )
    assert_refused_by_database(database, MfaFactor, principal_id=ann, kind="totp", name="phone", created_at=NOW)
    assert_refused_by_database(
        database, MfaFactor, principal_id=bob, kind="webauthn", name="k2", created_at=NOW, credential_id="c"
    )


def test_pending_totp_is_replaced_and_reset_removes_everything(
    database: Database, add_principal: Callable[..., int]
) -> None:
    pid = add_principal()
    with database.transaction() as s:
        mfa.add_mfa_factor(s, principal_id=pid, kind="totp", name="pending", created_at=NOW)
        mfa.add_mfa_factor(s, principal_id=pid, kind="totp", name="kept", created_at=NOW, confirmed_at=NOW)
        mfa.delete_pending_totp(s, principal_id=pid)
    with database.transaction() as s:
        assert [f.name for f in mfa.list_mfa_factors(s, principal_id=pid, confirmed_only=False)] == ["kept"]
        mfa.replace_recovery_codes(s, principal_id=pid, code_hmacs=["r1", "r2"], now=NOW)
        assert mfa.delete_mfa_state(s, principal_id=pid) == 1
    with database.transaction() as s:
        assert mfa.list_mfa_factors(s, principal_id=pid, confirmed_only=False) == []
        assert mfa.count_recovery_codes(s, principal_id=pid) == 0


def test_sign_count_moves_once(database: Database, add_principal: Callable[..., int]) -> None:
    pid = add_principal()
    with database.transaction() as s:
        key = mfa.add_mfa_factor(s, principal_id=pid, kind="webauthn", name="k", created_at=NOW, sign_count=5)
        assert key is not None
        key_id = key.id
    with database.transaction() as s:
        assert mfa.advance_sign_count(s, factor_id=key_id, expected=5, new=6, now=NOW)
        # A racing assertion that read the same counter loses.
        assert not mfa.advance_sign_count(s, factor_id=key_id, expected=5, new=7, now=NOW)
    with database.transaction() as s:
        row = mfa.get_mfa_factor(s, principal_id=pid, factor_id=key_id)
        assert row is not None and (row.sign_count, row.last_used_at) == (6, NOW)


def test_recovery_codes_are_spent_once(database: Database, add_principal: Callable[..., int]) -> None:
    pid, other = add_principal("u1"), add_principal("u2")
    with database.transaction() as s:
        mfa.replace_recovery_codes(s, principal_id=pid, code_hmacs=["old"], now=NOW)
        mfa.replace_recovery_codes(s, principal_id=pid, code_hmacs=["r1", "r2"], now=NOW)
        assert mfa.count_recovery_codes(s, principal_id=pid) == 2
    assert_refused_by_database(database, MfaRecoveryCode, principal_id=other, code_hmac="r1", created_at=NOW)
    with database.transaction() as s:
        assert not mfa.use_recovery_code(s, principal_id=pid, code_hmac="old", now=NOW)
        assert not mfa.use_recovery_code(s, principal_id=other, code_hmac="r1", now=NOW)
        assert mfa.use_recovery_code(s, principal_id=pid, code_hmac="r1", now=NOW)
    with database.transaction() as s:
        assert not mfa.use_recovery_code(s, principal_id=pid, code_hmac="r1", now=NOW)
        assert mfa.count_recovery_codes(s, principal_id=pid) == 1


def test_lockout_counter_is_created_once_and_deleted(database: Database) -> None:
    with database.transaction() as s:
        row = mfa.lock_mfa_lockout(s, key_hmac="k", scope="principal")
        assert (row.failures, row.lockouts, row.locked_until) == (0, 0, None)
        row.failures = 3
    with database.transaction() as s:
        again = mfa.lock_mfa_lockout(s, key_hmac="k", scope="principal")
        assert again.failures == 3
    assert_refused_by_database(database, MfaLockout, key_hmac="k", scope="address", failures=0, lockouts=0)
    with database.transaction() as s:
        assert mfa.delete_mfa_lockout(s, key_hmac="k")
        assert not mfa.delete_mfa_lockout(s, key_hmac="k")
