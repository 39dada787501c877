"""broker.store.device_certificates on SQLite and PostgreSQL: certificates seen, found and revoked."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from broker.store import device_certificates as certificates
from broker.store.db import Database
from broker.store.models import DeviceCertificate
from tests.store.conftest import NOW, assert_refused_by_database

YEAR = timedelta(days=365)


def test_use_find_and_revoke(database: Database, add_principal: Callable[..., int]) -> None:
    ann, bob = add_principal("u1"), add_principal("u2")
    with database.transaction() as s:
        first = certificates.record_certificate_use(
            s, fingerprint="f1", issuer="CN=CA", serial="01", store="corp", principal_id=ann, not_after=NOW + YEAR,
            now=NOW,
        ).id  # fmt: skip
        certificates.record_certificate_use(
            s, fingerprint="f2", issuer="CN=CA", serial="02", store="corp", principal_id=bob, not_after=NOW + YEAR,
            now=NOW,
        )  # fmt: skip
    later = NOW + timedelta(hours=1)
    with database.transaction() as s:
        again = certificates.record_certificate_use(
            s, fingerprint="f1", issuer="CN=CA", serial="01", store="corp", principal_id=bob, not_after=NOW + YEAR,
            now=later,
        )  # fmt: skip
        assert (again.id, again.principal_id, again.first_seen_at, again.last_seen_at) == (first, bob, NOW, later)
        assert [c.fingerprint for c in certificates.find_certificates(s)] == ["f1", "f2"]
        assert [c.fingerprint for c in certificates.find_certificates(s, serial="02", issuer="CN=CA")] == ["f2"]
        assert [c.fingerprint for c in certificates.find_certificates(s, principal_id=bob)] == ["f1", "f2"]
        assert certificates.find_certificates(s, issuer="CN=Other") == []
        assert certificates.certificate_revoked(s, fingerprint="f1", issuer="CN=CA", serial="01") is None
        certificates.revoke_certificates(s, ids=[first], now=NOW, reason="lost")
        certificates.revoke_certificates(s, ids=[], now=NOW, reason="nothing")
    with database.transaction() as s:
        revoked = certificates.certificate_revoked(s, fingerprint="f1", issuer="x", serial="x")
        assert revoked is not None and (revoked.revoked_at, revoked.revoked_reason) == (NOW, "lost")
        # Found by issuer and serial too (a re-issued certificate with the same serial).
        assert certificates.certificate_revoked(s, fingerprint="other", issuer="CN=CA", serial="01") is not None
        certificates.revoke_certificates(s, ids=[first], now=later, reason="again")
    with database.transaction() as s:
        kept = certificates.certificate_revoked(s, fingerprint="f1", issuer="x", serial="x")
        assert kept is not None and (kept.revoked_at, kept.revoked_reason) == (NOW, "lost")


def test_block_a_serial_never_seen(database: Database) -> None:
    with database.transaction() as s:
        certificates.block_certificate_serial(s, issuer="CN=CA", serial="99", now=NOW, reason="stolen laptop")
        certificates.block_certificate_serial(s, issuer="CN=CA", serial="98", now=NOW, reason="second")
    with database.transaction() as s:
        blocked = certificates.certificate_revoked(s, fingerprint="new", issuer="CN=CA", serial="99")
        assert blocked is not None and (blocked.fingerprint, blocked.revoked_reason) == (None, "stolen laptop")
        assert certificates.certificate_revoked(s, fingerprint="new", issuer="CN=Other", serial="99") is None


def test_fingerprints_are_unique_in_the_database(database: Database, add_principal: Callable[..., int]) -> None:
    pid = add_principal()
    with database.transaction() as s:
        certificates.record_certificate_use(
            s, fingerprint="f1", issuer="CN=CA", serial="01", store="corp", principal_id=pid, not_after=NOW, now=NOW
        )
    assert_refused_by_database(database, DeviceCertificate, fingerprint="f1", issuer="CN=CA", serial="02", store="c")
