"""SQLAlchemy 2 typed models. Anything that must happen once is unique in the database, not in Python.

Longer than most modules on purpose: it is the whole schema in one place, one short class per table, the way
Alembic compares it against the migrations (``migrations/env.py`` imports ``Base`` from here). Splitting it by
table would scatter the constraints a reviewer checks together (what is unique, what cascades).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite has no time zones: store naive UTC)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use datetime.now(UTC)")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


# Integer on SQLite (so it is the rowid alias and autoincrements), BIGINT on PostgreSQL.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Principal(Base):
    """A person or workload seen by the broker, keyed by (identity store, subject)."""

    __tablename__ = "principals"
    __table_args__ = (UniqueConstraint("store", "subject", name="uq_principals_store_subject"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    store: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(Text)
    issuer: Mapped[str] = mapped_column(Text)
    username: Mapped[str] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(Text)
    groups: Mapped[list[Any]] = mapped_column(default=list)
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class BrokerSession(Base):
    """A signed-in browser or CLI session. The id is a bearer secret: only its HMAC is stored."""

    __tablename__ = "broker_sessions"

    id_hmac: Mapped[str] = mapped_column(String(64), primary_key=True)
    principal_id: Mapped[int] = mapped_column(BigId, ForeignKey("principals.id"), index=True)
    identity: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    revoked_at: Mapped[datetime | None]
    client_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(Text)
    # The root key ``id_hmac`` was made with (``broker.keys``); None: before key ids.
    key_id: Mapped[str | None] = mapped_column(String(16))


class LoginRequest(Base):
    """A sign-in in flight (OIDC state/nonce/PKCE verifier, SAML AuthnRequest ID), bound to one browser.

    Keyed by the HMAC of the ``state`` (or RelayState) value; consumed exactly once by deleting the row.
    """

    __tablename__ = "login_requests"

    state_hmac: Mapped[str] = mapped_column(String(64), primary_key=True)
    store: Mapped[str] = mapped_column(String(64))
    browser_hmac: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class Issuance(Base):
    """One set of STS credentials that left the broker; the AccessKeyId ties it to CloudTrail."""

    __tablename__ = "issuances"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    principal_id: Mapped[int] = mapped_column(BigId, ForeignKey("principals.id"), index=True)
    session_hmac: Mapped[str | None] = mapped_column(String(64))
    role_name: Mapped[str] = mapped_column(String(64), index=True)
    role_arn: Mapped[str] = mapped_column(Text)
    account: Mapped[str] = mapped_column(String(12))
    channel: Mapped[str] = mapped_column(String(16))
    access_key_id: Mapped[str] = mapped_column(String(128), unique=True)
    source_identity: Mapped[str] = mapped_column(String(64))
    role_session_name: Mapped[str] = mapped_column(String(64))
    session_tags: Mapped[dict[str, Any]]
    transitive_tag_keys: Mapped[list[Any]]
    policy_digest: Mapped[str | None] = mapped_column(String(64))
    requested_duration_seconds: Mapped[int | None]
    granted_duration_seconds: Mapped[int]
    issued_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    client_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(Text)
    revoked_at: Mapped[datetime | None]


class AuditEvent(Base):
    """One audit event (``broker.audit``).

    Appended with its own keyed ``mac`` and no shared lock; the sealer later gives it a ``segment``, a
    ``position`` in it and a keyed running ``chain`` value. Events written before segments existed keep their
    ``prev_hash``/``hash`` chain and form segment 0. ``seq`` is only the insertion id: the order that the
    integrity checks bind is (``segment``, ``position``).
    """

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_segment_position", "segment", "position", unique=True),)

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    occurred_at: Mapped[datetime] = mapped_column(index=True)
    event: Mapped[str] = mapped_column(String(64), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(128))
    principal: Mapped[str | None] = mapped_column(Text, index=True)
    store: Mapped[str | None] = mapped_column(String(64))
    channel: Mapped[str | None] = mapped_column(String(16))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]]
    # The broker process that wrote the event (host, pid and a per-start nonce), covered by ``mac``.
    writer: Mapped[str | None] = mapped_column(String(96))
    mac: Mapped[str | None] = mapped_column(String(64))
    # The root secret the MAC was made with (``broker.keys``); None: before key ids, any listed key is tried.
    key_id: Mapped[str | None] = mapped_column(String(16))
    segment: Mapped[int | None] = mapped_column(BigId)
    position: Mapped[int | None] = mapped_column(Integer)
    chain: Mapped[str | None] = mapped_column(String(64))
    # Legacy (segment 0) events only: the one-row-at-a-time chain they were written with.
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))


class AuditSegment(Base):
    """A sealed batch of events: ``hash`` is the ``chain`` of its last event, ``seal`` an HMAC over this row."""

    __tablename__ = "audit_segments"

    number: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    count: Mapped[int] = mapped_column(Integer)
    prev_hash: Mapped[str] = mapped_column(String(64))
    # Empty for segment 0 (the legacy events) until the first sealer pass after the upgrade seals it.
    hash: Mapped[str] = mapped_column(String(64))
    sealed_at: Mapped[datetime | None]
    seal: Mapped[str | None] = mapped_column(String(64))
    # The root secret of the seal and of its events' chain values; None: before key ids, any listed key.
    key_id: Mapped[str | None] = mapped_column(String(16))


class AuditDigest(Base):
    """A signed digest of the sealed segments, as written to the anchor sinks (``broker.anchors``)."""

    __tablename__ = "audit_digests"

    number: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    segment: Mapped[int] = mapped_column(BigId)
    created_at: Mapped[datetime]
    # The compact JWS exactly as published; ``published_at`` is set once every sink has it.
    token: Mapped[str] = mapped_column(Text)
    published_at: Mapped[datetime | None]


class ReplayGuard(Base):
    """One-time values (assertion IDs, ``jti``, nonces, device codes, TOTP steps), unique by (kind, key).

    Rows live until the value would have expired anyway; ``purge_expired`` removes them afterwards.
    """

    __tablename__ = "replay_guard"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_hmac: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime]

    __table_args__ = (Index("ix_replay_guard_expires_at", "expires_at"),)


class SigningKey(Base):
    """One of the broker's own JWS signing keys (``broker.oauth.tokens``); the private half encrypted at rest.

    ``generation`` is unique, so two processes rotating at the same moment cannot both add a key: one INSERT
    wins and the other reloads. A key signs until ``retired_at`` and is published until ``publish_until``
    unless ``revoked_at`` is set.
    """

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, unique=True)
    alg: Mapped[str] = mapped_column(String(16))
    public_jwk: Mapped[dict[str, Any]]
    # AES-256-GCM(key derived from the root secret, nonce || ciphertext, AAD = kid), base64url.
    private_jwk_encrypted: Mapped[str] = mapped_column(Text)
    # Which root secret of the keyring encrypted it (``broker.keys``); None: written before key ids.
    key_id: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime]
    retired_at: Mapped[datetime | None]
    publish_until: Mapped[datetime | None] = mapped_column(index=True)
    # Revoked by an operator: never published again; the row stays until ``publish_until`` so its tokens are
    # refused as revoked rather than as unknown.
    revoked_at: Mapped[datetime | None]


# ---------------------------------------------------------------- temporary privilege and revocation


class AccessRequestRow(Base):
    """A just-in-time request for a role (``broker.elevation``). Status moves one way:
    pending -> approved -> ended | revoked, or pending -> denied | expired | cancelled."""

    __tablename__ = "access_requests"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    principal_id: Mapped[int] = mapped_column(BigId, ForeignKey("principals.id"), index=True)
    principal: Mapped[str] = mapped_column(Text)
    role_name: Mapped[str] = mapped_column(String(64), index=True)
    reason: Mapped[str] = mapped_column(Text)
    duration_seconds: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime]
    # A pending request nobody answers is expired after this.
    expires_at: Mapped[datetime] = mapped_column(index=True)
    decided_by: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None]
    decision_note: Mapped[str | None] = mapped_column(Text)
    grant_starts_at: Mapped[datetime | None]
    grant_ends_at: Mapped[datetime | None] = mapped_column(index=True)
    ended_at: Mapped[datetime | None]


class Revocation(Base):
    """One revocation: of an issuance, a principal's sessions, or a role's sessions, and whether AWS took it."""

    __tablename__ = "revocations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(16))
    role_name: Mapped[str | None] = mapped_column(String(64))
    principal_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("principals.id"))
    issuance_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("issuances.id"))
    source_identity: Mapped[str | None] = mapped_column(String(64))
    revoked_before: Mapped[datetime]
    actor: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(index=True)
    # Role ARNs whose inline deny policy was written, and the ones that failed (retry with `broker revoke`).
    aws_applied: Mapped[list[Any]]
    aws_failed: Mapped[list[Any]]


class WebhookDelivery(Base):
    """A notification in the outbox: written with the action it reports, sent later by the background worker."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]


class PrincipalNetwork(Base):
    """A network (CIDR) a principal signed in from; a sign-in from a network not listed here raises an alert."""

    __tablename__ = "principal_networks"
    __table_args__ = (UniqueConstraint("principal", "network", name="uq_principal_networks"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    principal: Mapped[str] = mapped_column(String(320))
    network: Mapped[str] = mapped_column(String(64))
    first_seen_at: Mapped[datetime]


# ---------------------------------------------------------------- credential helper sign-in


class DeviceAuthorization(Base):
    """An RFC 8628 device authorization in flight. Both codes are bearer secrets: only HMACs are stored.

    ``status`` moves pending -> approved | denied -> consumed; the move to ``consumed`` is one conditional
    UPDATE, so a device code yields tokens once even with several broker processes polling.
    """

    __tablename__ = "device_authorizations"

    device_code_hmac: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_code_hmac: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    interval_seconds: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    last_polled_at: Mapped[datetime | None]
    requester_ip: Mapped[str | None] = mapped_column(String(64))
    requester_agent: Mapped[str | None] = mapped_column(Text)
    # Set when a signed-in person approves: who, how strongly, and until when their browser session lasts.
    identity: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    session_expires_at: Mapped[datetime | None]
    decided_at: Mapped[datetime | None]
    family_id: Mapped[str | None] = mapped_column(String(36))


class AuthorizationCode(Base):
    """An RFC 6749 section 4.1 authorization code for the loopback flow (RFC 8252), with its PKCE challenge."""

    __tablename__ = "authorization_codes"

    code_hmac: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(128))
    redirect_uri: Mapped[str] = mapped_column(Text)
    code_challenge: Mapped[str] = mapped_column(String(128))
    identity: Mapped[dict[str, Any]]
    session_expires_at: Mapped[datetime]
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    consumed_at: Mapped[datetime | None]
    family_id: Mapped[str | None] = mapped_column(String(36))


class RefreshFamily(Base):
    """One CLI sign-in: the identity and MFA level reached at login, and the absolute end of the sign-in.

    Every refresh token rotated from the same sign-in belongs to it; revoking the family ends them all.
    """

    __tablename__ = "refresh_families"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    principal_id: Mapped[int] = mapped_column(BigId, ForeignKey("principals.id"), index=True)
    client_id: Mapped[str] = mapped_column(String(128))
    grant_type: Mapped[str] = mapped_column(String(64))
    identity: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(64))
    client_ip: Mapped[str | None] = mapped_column(String(64))


class RefreshToken(Base):
    """One refresh token of a family (only its HMAC). ``(family_id, generation)`` is unique, so two racing
    rotations of the same token cannot both mint a successor."""

    __tablename__ = "refresh_tokens"
    __table_args__ = (UniqueConstraint("family_id", "generation", name="uq_refresh_tokens_family_generation"),)

    token_hmac: Mapped[str] = mapped_column(String(64), primary_key=True)
    family_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("refresh_families.id", ondelete="CASCADE"), index=True
    )
    generation: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    rotated_at: Mapped[datetime | None]
    # The root key ``token_hmac`` was made with (``broker.keys``); None: before key ids.
    key_id: Mapped[str | None] = mapped_column(String(16))


# ---------------------------------------------------------------- MFA held by the broker


class MfaFactor(Base):
    """A second factor the broker holds for a principal: a TOTP secret or a WebAuthn credential.

    A TOTP factor is pending (``confirmed_at`` NULL) until its first valid code; its secret is stored only
    AES-256-GCM encrypted (``broker.mfa.crypto``). A WebAuthn credential id is unique across all principals.
    """

    __tablename__ = "mfa_factors"
    __table_args__ = (UniqueConstraint("principal_id", "name", name="uq_mfa_factors_principal_name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    principal_id: Mapped[int] = mapped_column(BigId, ForeignKey("principals.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    confirmed_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    secret_encrypted: Mapped[str | None] = mapped_column(Text)
    credential_id: Mapped[str | None] = mapped_column(String(1400), unique=True)
    public_key: Mapped[str | None] = mapped_column(Text)
    sign_count: Mapped[int] = mapped_column(BigInteger, default=0)
    user_verified: Mapped[bool] = mapped_column(Boolean, default=False)


class MfaRecoveryCode(Base):
    """A single-use recovery code, stored only as a keyed HMAC; ``used_at`` is set once, atomically."""

    __tablename__ = "mfa_recovery_codes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    principal_id: Mapped[int] = mapped_column(BigId, ForeignKey("principals.id"), index=True)
    code_hmac: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class MfaLockout(Base):
    """Failed second-factor attempts for one principal or one client address (keyed by HMAC).

    In the database, not in process memory, so a lockout holds across every broker process.
    """

    __tablename__ = "mfa_lockouts"

    key_hmac: Mapped[str] = mapped_column(String(64), primary_key=True)
    scope: Mapped[str] = mapped_column(String(16))
    failures: Mapped[int] = mapped_column(Integer, default=0)
    lockouts: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime | None]
    locked_until: Mapped[datetime | None]


class DeviceCertificate(Base):
    """A device certificate the broker has seen sign in, or one an operator revoked (``broker revoke``).

    ``fingerprint`` is the SHA-256 of the DER (unique when known); a certificate revoked by serial before it
    ever signed in has only ``issuer`` and ``serial``. A row with ``revoked_at`` refuses every later sign-in
    with that certificate (by fingerprint, or by issuer and serial).
    """

    __tablename__ = "device_certificates"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str | None] = mapped_column(String(64), unique=True)
    issuer: Mapped[str] = mapped_column(Text)
    serial: Mapped[str] = mapped_column(String(64), index=True)
    store: Mapped[str] = mapped_column(String(64))
    principal_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("principals.id"), index=True)
    not_after: Mapped[datetime | None]
    first_seen_at: Mapped[datetime | None]
    last_seen_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(Text)


class SamlSession(Base):
    """What single logout needs to know about a SAML sign-in, beside its broker session (same HMAC key).

    ``name_id_hmac`` finds the sessions an IdP's LogoutRequest names; ``logout`` keeps the NameID, its
    qualifiers and the SessionIndex that the broker's own LogoutRequest must repeat (core 3.7.1). No secret.
    """

    __tablename__ = "saml_sessions"

    session_hmac: Mapped[str] = mapped_column(String(64), primary_key=True)
    store: Mapped[str] = mapped_column(String(64))
    name_id_hmac: Mapped[str] = mapped_column(String(64), index=True)
    logout: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


# ---------------------------------------------------------------- SCIM 2.0 provisioning


class ScimUser(Base):
    """A person provisioned by a SCIM client (``broker.scim``), one per (identity store, userName).

    ``document`` is the SCIM User resource as the client last wrote it (without ``groups``, which come from
    ``scim_memberships``). ``user_name_key`` is the case-folded userName (RFC 7643 section 4.1.1: userName is
    not case-exact), unique per store in the database. ``principal_id`` links the broker principal once the
    person signs in; NULL means they never did.
    """

    __tablename__ = "scim_users"
    __table_args__ = (UniqueConstraint("store", "user_name_key", name="uq_scim_users_store_user_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    client: Mapped[str] = mapped_column(String(64))
    store: Mapped[str] = mapped_column(String(64), index=True)
    user_name: Mapped[str] = mapped_column(Text)
    user_name_key: Mapped[str] = mapped_column(String(512))
    external_id: Mapped[str | None] = mapped_column(String(512), index=True)
    email_key: Mapped[str | None] = mapped_column(String(512), index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    document: Mapped[dict[str, Any]]
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    principal_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("principals.id"), index=True)
    signed_in_at: Mapped[datetime | None]


class ScimGroup(Base):
    """A group provisioned by a SCIM client; grant rules name it by ``display_name``."""

    __tablename__ = "scim_groups"
    __table_args__ = (UniqueConstraint("store", "display_name_key", name="uq_scim_groups_store_display_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    client: Mapped[str] = mapped_column(String(64))
    store: Mapped[str] = mapped_column(String(64), index=True)
    display_name: Mapped[str] = mapped_column(Text)
    display_name_key: Mapped[str] = mapped_column(String(512))
    external_id: Mapped[str | None] = mapped_column(String(512), index=True)
    document: Mapped[dict[str, Any]]
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ScimMembership(Base):
    """One user in one group; deleting either side deletes the membership."""

    __tablename__ = "scim_memberships"

    group_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("scim_groups.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("scim_users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    # The member's display name as the client sent it (RFC 7643 section 4.2); the userName when it sent none.
    display: Mapped[str | None] = mapped_column(Text)


class SchemaCompatibility(Base):
    """One row: the oldest code that serves this schema (``broker.store.migrations``, expand and contract).

    ``serves_from`` is the newest contract migration at or below the database's revision, written by the
    release that last migrated; None when every applied migration only expanded.
    """

    __tablename__ = "schema_compatibility"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    serves_from: Mapped[str | None] = mapped_column(String(64))
