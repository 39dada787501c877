"""Keyword-only store functions. Each takes the SQLAlchemy session explicitly; callers own transactions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.errors import ReplayDetected
from broker.identity import Identity
from broker.store.models import (
    AuditChainHead,
    AuditEvent,
    BrokerSession,
    Issuance,
    LoginRequest,
    Principal,
    ReplayGuard,
    SigningKey,
)

# ---------------------------------------------------------------- principals


def upsert_principal(session: Session, *, identity: Identity, now: datetime) -> Principal:
    principal = session.scalars(
        select(Principal).where(Principal.store == identity.store, Principal.subject == identity.subject)
    ).one_or_none()
    if principal is None:
        principal = Principal(
            store=identity.store,
            subject=identity.subject,
            issuer=identity.issuer,
            username=identity.username,
            email=identity.email,
            groups=sorted(identity.groups),
            first_seen_at=now,
            last_seen_at=now,
        )
        session.add(principal)
        session.flush()
    else:
        principal.username = identity.username
        principal.email = identity.email
        principal.groups = sorted(identity.groups)
        principal.last_seen_at = now
    return principal


# ---------------------------------------------------------------- broker sessions


def create_session(
    session: Session,
    *,
    id_hmac: str,
    principal: Principal,
    identity: Identity,
    now: datetime,
    expires_at: datetime,
    client_ip: str | None,
    user_agent: str | None,
) -> BrokerSession:
    row = BrokerSession(
        id_hmac=id_hmac,
        principal_id=principal.id,
        identity=identity.to_json(),
        created_at=now,
        last_seen_at=now,
        expires_at=expires_at,
        client_ip=client_ip,
        user_agent=user_agent,
    )
    session.add(row)
    return row


def get_session(session: Session, *, id_hmac: str) -> BrokerSession | None:
    return session.get(BrokerSession, id_hmac)


def touch_session(session: Session, *, id_hmac: str, now: datetime) -> None:
    session.execute(update(BrokerSession).where(BrokerSession.id_hmac == id_hmac).values(last_seen_at=now))


def delete_session(session: Session, *, id_hmac: str) -> None:
    session.execute(delete(BrokerSession).where(BrokerSession.id_hmac == id_hmac))


def update_session_identity(session: Session, *, id_hmac: str, identity: Identity) -> None:
    session.execute(update(BrokerSession).where(BrokerSession.id_hmac == id_hmac).values(identity=identity.to_json()))


# ---------------------------------------------------------------- sign-ins in flight


def save_login_request(
    session: Session,
    *,
    state_hmac: str,
    store: str,
    browser_hmac: str,
    data: dict[str, Any],
    now: datetime,
    expires_at: datetime,
) -> None:
    session.add(
        LoginRequest(
            state_hmac=state_hmac,
            store=store,
            browser_hmac=browser_hmac,
            data=data,
            created_at=now,
            expires_at=expires_at,
        )
    )


def take_login_request(session: Session, *, state_hmac: str) -> LoginRequest | None:
    """Fetch and delete in one step, so a state value works once even across processes."""
    row = session.get(LoginRequest, state_hmac, with_for_update=True)
    if row is not None:
        session.delete(row)
        session.flush()
    return row


# ---------------------------------------------------------------- issuances


def record_issuance(session: Session, **fields: Any) -> Issuance:
    row = Issuance(**fields)
    session.add(row)
    session.flush()
    return row


def list_issuances(session: Session, *, principal_id: int | None = None, limit: int = 100) -> Sequence[Issuance]:
    query = select(Issuance).order_by(Issuance.id.desc()).limit(limit)
    if principal_id is not None:
        query = query.where(Issuance.principal_id == principal_id)
    return session.scalars(query).all()


# ---------------------------------------------------------------- replay guard


def consume_once(session: Session, *, kind: str, key_hmac: str, expires_at: datetime) -> None:
    """Record a one-time value; raise ReplayDetected if it was recorded before (by any process).

    The primary key makes the database the arbiter: two processes racing on one value both INSERT and
    exactly one commits. A savepoint keeps the caller's transaction usable after the conflict.
    """
    try:
        with session.begin_nested():
            session.add(ReplayGuard(kind=kind, key_hmac=key_hmac, expires_at=expires_at))
    except IntegrityError:
        raise ReplayDetected(reason=f"{kind}_replay") from None


def purge_expired(session: Session, *, now: datetime) -> int:
    """Remove replay-guard rows, sign-ins in flight and sessions that can no longer matter."""
    total = 0
    for model in (ReplayGuard, LoginRequest, BrokerSession):
        result = session.execute(delete(model).where(model.expires_at < now))
        total += int(getattr(result, "rowcount", 0) or 0)
    return total


# ---------------------------------------------------------------- audit chain


def lock_chain_head(session: Session) -> AuditChainHead:
    """Lock (creating if needed) the chain head row; appends from every process queue on this lock."""
    head = session.get(AuditChainHead, 1, with_for_update=True)
    if head is None:
        try:
            with session.begin_nested():
                session.add(AuditChainHead(id=1, seq=0, hash="0" * 64))
        except IntegrityError:
            pass  # another process created it first
        head = session.get(AuditChainHead, 1, with_for_update=True, populate_existing=True)
        assert head is not None
    return head


def insert_audit_event(session: Session, *, head: AuditChainHead, event: AuditEvent) -> None:
    session.add(event)
    head.seq = event.seq
    head.hash = event.hash
    session.flush()


def iter_audit_events(session: Session, *, batch: int = 1000) -> Iterator[AuditEvent]:
    last = -1
    while True:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.seq > last).order_by(AuditEvent.seq).limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq


def get_chain_head(session: Session) -> AuditChainHead | None:
    return session.get(AuditChainHead, 1)


def list_audit_events(
    session: Session, *, event: str | None = None, principal: str | None = None, limit: int = 100
) -> Sequence[AuditEvent]:
    query = select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(limit)
    if event:
        query = query.where(AuditEvent.event == event)
    if principal:
        query = query.where(AuditEvent.principal == principal)
    return session.scalars(query).all()


# ---------------------------------------------------------------- signing keys


def list_signing_keys(session: Session, *, now: datetime) -> Sequence[SigningKey]:
    """Keys still published (newest first): the current key and retired keys whose tokens may be live."""
    query = (
        select(SigningKey)
        .where((SigningKey.publish_until.is_(None)) | (SigningKey.publish_until > now))
        .order_by(SigningKey.generation.desc())
    )
    return session.scalars(query).all()


def latest_signing_key(session: Session) -> SigningKey | None:
    return session.scalars(select(SigningKey).order_by(SigningKey.generation.desc()).limit(1)).one_or_none()


def add_signing_key(session: Session, *, key: SigningKey) -> bool:
    """Insert a new key; False if another process added this generation first (unique in the database)."""
    try:
        with session.begin_nested():
            session.add(key)
    except IntegrityError:
        return False
    return True


def retire_signing_key(session: Session, *, kid: str, retired_at: datetime, publish_until: datetime) -> None:
    session.execute(
        update(SigningKey)
        .where(SigningKey.kid == kid, SigningKey.retired_at.is_(None))
        .values(retired_at=retired_at, publish_until=publish_until)
    )


def delete_expired_signing_keys(session: Session, *, now: datetime) -> int:
    """Remove keys no live token can need any more."""
    result = session.execute(
        delete(SigningKey).where(SigningKey.publish_until.is_not(None), SigningKey.publish_until <= now)
    )
    return int(getattr(result, "rowcount", 0) or 0)
