"""SQLAlchemy 2 typed models. Anything that must happen once is unique in the database, not in Python."""

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
    """One hash-chained audit event. ``hash`` = HMAC(key, prev_hash || canonical JSON of the other fields)."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
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
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditChainHead(Base):
    """A single row naming the last event; locking it serializes appends across broker processes."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigId)
    hash: Mapped[str] = mapped_column(String(64))


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
    wins and the other reloads. A key signs until ``retired_at`` and is published until ``publish_until``.
    """

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, unique=True)
    alg: Mapped[str] = mapped_column(String(16))
    public_jwk: Mapped[dict[str, Any]]
    # AES-256-GCM(key derived from the root secret, nonce || ciphertext, AAD = kid), base64url.
    private_jwk_encrypted: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    retired_at: Mapped[datetime | None]
    publish_until: Mapped[datetime | None] = mapped_column(index=True)
