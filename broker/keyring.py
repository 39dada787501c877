"""What is stored under which key, whether the configured keys can read it, and moving it to the newest key.

Three kinds of stored values depend on the keys (``broker.keys``): the audit trail (MACs and seals, by root
key id), the broker's signing keys (encrypted under a key derived from a root key, recorded in ``key_id``) and
TOTP secrets (encrypted under ``mfa.encryption_keys`` or a key derived from a root key, named by fingerprint
in their envelope). :class:`Keyring` reports them (``broker keys status``), finds what the configured keys
cannot read (`broker config check`, /readyz) and re-encrypts and re-seals everything under the newest keys
(``broker keys re-encrypt``), after which an old root key can be removed. docs/operations.md, "Rotating
secret_key", is the procedure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from broker.audit import AuditTrail
from broker.context import Clock, utcnow
from broker.encryption import Undecryptable
from broker.errors import KeysUnusable
from broker.keys import Keys
from broker.mfa.crypto import SecretBox
from broker.oauth.tokens import open_signing_key, signing_key_cipher
from broker.settings import Settings
from broker.store import key_usage
from broker.store.db import Database


@dataclass(frozen=True)
class Usage:
    """``count`` values of kind ``what`` stored under ``key`` (a root key id or an encryption key's label)."""

    what: str
    key: str
    count: int
    readable: bool
    newest: bool
    # Sessions and refresh tokens cannot be re-keyed (only their HMAC is stored): they end when their key is
    # removed, so ``until`` says when the last of them ends anyway.
    movable: bool = True
    until: datetime | None = None


@dataclass
class Report:
    usage: list[Usage] = field(default_factory=list)
    # Stored values the configured keys cannot read: each line says what to do (never a secret).
    problems: list[str] = field(default_factory=list)

    @property
    def to_move(self) -> int:
        """Values not under the newest key (what `broker keys re-encrypt` moves)."""
        return sum(u.count for u in self.usage if not u.newest and u.movable)

    def ending(self) -> list[Usage]:
        """Live sessions and CLI sign-ins that end if an older key is removed now."""
        return [u for u in self.usage if not u.newest and not u.movable]


@dataclass(frozen=True)
class Moved:
    signing_keys: int
    totp_factors: int
    audit_events: int


class Keyring:
    def __init__(self, settings: Settings, *, db: Database, keys: Keys, clock: Clock = utcnow) -> None:
        self.settings = settings
        self.db = db
        self.keys = keys
        self.clock = clock
        self.cipher = signing_key_cipher(keys)
        explicit = [k.get_secret_value().encode() for k in settings.mfa.encryption_keys]
        self.box = SecretBox.for_keyring(explicit, keys)
        window = timedelta(seconds=settings.audit.seal_window_seconds)
        self.trail = AuditTrail(keys, clock, seal_window=window)

    # ------------------------------------------------------------ reading

    def _root_label(self, key_id: str | None) -> str:
        return f"secret_keys {key_id}" if key_id is not None else "(before key ids)"

    def report(self) -> Report:
        report = Report()
        current = self.keys.current_id
        with self.db.transaction() as session:
            events = key_usage.audit_event_key_counts(session)
            segments = key_usage.audit_segment_key_counts(session)
            signing = list(key_usage.all_signing_keys(session))
            totp = key_usage.totp_key_counts(session)
            now = self.clock()
            live = {
                "sessions": key_usage.live_session_key_counts(session, now=now),
                "CLI sign-ins": key_usage.live_refresh_key_counts(session, now=now),
            }
        for what, live_counts in live.items():
            for kid, (count, until) in sorted(live_counts.items(), key=lambda item: str(item[0])):
                listed = kid is None or kid in self.keys.ids
                label = self._root_label(kid)
                report.usage.append(Usage(what, label, count, listed, kid == current, movable=False, until=until))
        for what, counts in (("audit events", events), ("audit segments", segments)):
            for kid, count in sorted(counts.items(), key=lambda item: str(item[0])):
                listed = kid is None or kid in self.keys.ids
                report.usage.append(Usage(what, self._root_label(kid), count, listed, kid == current))
                if not listed:
                    report.problems.append(
                        f"{count} {what} were made with secret key {kid!r}, which is not configured: `broker audit "
                        f"verify` cannot check them. List {kid} in secret_keys again."
                    )
        by_key: dict[str, list[int]] = {}
        for row in signing:
            try:
                opened_by, _ = open_signing_key(self.cipher, row)
            except Undecryptable:
                label = self._root_label(row.key_id) if row.key_id else "an unknown key"
                report.problems.append(
                    f"signing key {row.kid} cannot be decrypted with the configured secret keys (it was encrypted "
                    f"under {label}): list that key in secret_keys again, or /jwks.json and token signing fail."
                )
                by_key.setdefault(f"{label} (unreadable)", [0, 0])[0] += 1
                continue
            # A row from before key ids counts as "to move": recording its key id is part of re-encrypting.
            entry = by_key.setdefault(self._root_label(opened_by), [0, 0])
            entry[0] += 1
            entry[1] += int(row.key_id == current)
        for label, (count, newest) in by_key.items():
            if newest:
                report.usage.append(Usage("signing keys", label, newest, True, True))
            if count - newest:
                report.usage.append(Usage("signing keys", label, count - newest, "unreadable" not in label, False))
        for fingerprint, count in sorted(totp.items(), key=lambda item: str(item[0])):
            source = self.box.labels.get(fingerprint or "")
            if source is None:
                report.problems.append(
                    f"{count} TOTP factor(s) are encrypted under a key that is not configured (fingerprint "
                    f"{fingerprint}): list the key they were enrolled under again in mfa.encryption_keys or "
                    "secret_keys, or those people cannot sign in with their authenticator app."
                )
            report.usage.append(
                Usage(
                    "TOTP factors",
                    source or f"unknown key {fingerprint}",
                    count,
                    source is not None,
                    fingerprint == self.box.current_id,
                )
            )
        return report

    def readiness_problem(self) -> str | None:
        """Why the broker should not take traffic, naming no secret; None when every stored key is readable.

        Only what serving needs: signing keys and TOTP secrets. (Audit key ids concern `broker audit verify`.)
        """
        unreadable_signing, unreadable_totp = 0, 0
        with self.db.transaction() as session:
            signing = list(key_usage.all_signing_keys(session))
            totp = key_usage.totp_key_counts(session)
        for row in signing:
            try:
                open_signing_key(self.cipher, row)
            except Undecryptable:
                unreadable_signing += 1
        for fingerprint, count in totp.items():
            if (fingerprint or "") not in self.box.labels:
                unreadable_totp += count
        parts = []
        if unreadable_signing:
            parts.append(f"{unreadable_signing} signing key(s)")
        if unreadable_totp:
            parts.append(f"{unreadable_totp} TOTP factor(s)")
        if not parts:
            return None
        return (
            f"{' and '.join(parts)} cannot be decrypted with the configured keys: run `broker keys status` and "
            "list the missing key again"
        )

    # ------------------------------------------------------------ moving

    def re_encrypt(self) -> Moved:
        """Move every signing key and TOTP secret to the newest keys and re-seal the audit trail under the
        newest root key. Refuses (``keys_unusable``) while anything cannot be read, changing nothing then."""
        report = self.report()
        if report.problems:
            raise KeysUnusable(
                "Some stored values cannot be read with the configured keys, so nothing was re-encrypted:\n  "
                + "\n  ".join(report.problems),
                reason="keys.unreadable",
            )
        current = self.cipher.current_id
        moved_signing = 0
        with self.db.transaction() as session:
            for row in key_usage.all_signing_keys(session):
                if row.key_id == current:
                    continue
                _, plain = open_signing_key(self.cipher, row)
                key_id, body = self.cipher.seal_body(plain, aad=row.kid.encode())
                key_usage.reencrypt_signing_key(session, kid=row.kid, private_jwk_encrypted=body, key_id=key_id)
                moved_signing += 1
        moved_totp = self._rotate_totp()
        events = self.trail.reseal(self.db)
        self.trail.record(
            self.db,
            event="keys.re_encrypt",
            outcome="ok",
            reason="keys.reencrypted",
            detail={
                "key_id": current,
                "signing_keys": moved_signing,
                "totp_factors": moved_totp,
                "audit_events": events,
            },
        )
        return Moved(moved_signing, moved_totp, events)

    def _rotate_totp(self) -> int:
        from broker.mfa.service import MfaService

        service = MfaService(self.settings, db=self.db, keys=self.keys, audit=self.trail, clock=self.clock)
        return service.rotate_key()
