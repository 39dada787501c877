"""Keyword-only store functions. Each takes the SQLAlchemy session explicitly; callers own transactions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import ColumnElement, Table, bindparam, delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.errors import ReplayDetected
from broker.identity import Identity
from broker.store.models import (
    AccessRequestRow,
    AuditDigest,
    AuditEvent,
    AuditSegment,
    AuthorizationCode,
    BrokerSession,
    DeviceAuthorization,
    DeviceCertificate,
    Issuance,
    LoginRequest,
    MfaFactor,
    MfaLockout,
    MfaRecoveryCode,
    Principal,
    PrincipalNetwork,
    RefreshFamily,
    RefreshToken,
    ReplayGuard,
    Revocation,
    SamlSession,
    ScimGroup,
    ScimMembership,
    ScimUser,
    SigningKey,
    WebhookDelivery,
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


class PrincipalRef(NamedTuple):
    id: int
    disabled: bool


def touch_principal(session: Session, *, identity: Identity, now: datetime) -> PrincipalRef:
    """:func:`upsert_principal` as one statement, for the sign-in and issuance hot paths.

    ``INSERT ... ON CONFLICT (store, subject) DO UPDATE ... RETURNING id`` (PostgreSQL and SQLite 3.35+): one
    round trip and no unit of work, where loading the row and flushing its changes takes two of each.
    """
    table = cast(Table, Principal.__table__)
    dialect_insert = postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = dialect_insert(table).values(
        store=identity.store,
        subject=identity.subject,
        issuer=identity.issuer,
        username=identity.username,
        email=identity.email,
        groups=sorted(identity.groups),
        first_seen_at=now,
        last_seen_at=now,
    )
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.store, table.c.subject],
        set_={
            "username": statement.excluded.username,
            "email": statement.excluded.email,
            "groups": statement.excluded.groups,
            "last_seen_at": statement.excluded.last_seen_at,
        },
    )
    found = session.execute(statement.returning(table.c.id, table.c.disabled)).one()
    return PrincipalRef(found.id, bool(found.disabled))


def principal_disabled(session: Session, *, store: str, subject: str) -> bool:
    """True when an administrator disabled this principal (no row yet means not disabled)."""
    disabled = session.scalar(select(Principal.disabled).where(Principal.store == store, Principal.subject == subject))
    return bool(disabled)


def principal_id_disabled(session: Session, *, principal_id: int) -> bool:
    """True when the principal with this row id is disabled."""
    return bool(session.scalar(select(Principal.disabled).where(Principal.id == principal_id)))


# ---------------------------------------------------------------- broker sessions


def create_session(
    session: Session,
    *,
    id_hmac: str,
    principal_id: int,
    identity: Identity,
    now: datetime,
    expires_at: datetime,
    client_ip: str | None,
    user_agent: str | None,
    key_id: str | None = None,
) -> None:
    """One Core INSERT (a sign-in's hot path): the session row, keyed by the HMAC of its id (made with root
    key ``key_id``)."""
    session.execute(
        _INSERT_SESSION,
        {
            "id_hmac": id_hmac,
            "principal_id": principal_id,
            "identity": identity.to_json(),
            "created_at": now,
            "last_seen_at": now,
            "expires_at": expires_at,
            "client_ip": client_ip,
            "user_agent": user_agent,
            "key_id": key_id,
        },
    )


_INSERT_SESSION = insert(cast(Table, BrokerSession.__table__))


def get_session(session: Session, *, id_hmac: str) -> BrokerSession | None:
    return session.get(BrokerSession, id_hmac)


def find_session(session: Session, *, id_hmacs: Sequence[str]) -> BrokerSession | None:
    """The session stored under any of these HMACs (one per listed root key, ``broker.keys``)."""
    query = select(BrokerSession).where(BrokerSession.id_hmac.in_(list(id_hmacs))).limit(1)
    return session.scalars(query).first()


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
    """Fetch and delete in one statement (``DELETE ... RETURNING``), so a state value works once even across
    processes: a concurrent taker waits on the row and then finds nothing. The returned row is detached."""
    table = cast(Table, LoginRequest.__table__)
    taken = (
        session.execute(delete(table).where(table.c.state_hmac == state_hmac).returning(*table.c))
        .mappings()
        .one_or_none()
    )
    return LoginRequest(**taken) if taken is not None else None


# ---------------------------------------------------------------- issuances


def insert_issuance(session: Session, **fields: Any) -> int:
    """:func:`record_issuance` as one Core ``INSERT ... RETURNING id``, for the issuance hot path."""
    issuance_id: int = session.execute(_INSERT_ISSUANCE, fields).scalar_one()
    return issuance_id


_INSERT_ISSUANCE = insert(cast(Table, Issuance.__table__)).returning(cast(Table, Issuance.__table__).c.id)


# ---------------------------------------------------------------- replay guard


def consume_once(
    session: Session,
    *,
    kind: str,
    key_hmac: str | Sequence[str],
    expires_at: datetime,
    message: str | None = None,
    savepoint: bool = True,
) -> None:
    """Record a one-time value; raise ReplayDetected if it was recorded before (by any process).

    ``key_hmac`` may be the value's HMAC under every listed root key (``broker.keys``): each is recorded, so a
    value used just before a key rotation is still refused just after it.

    The primary key makes the database the arbiter: two processes racing on one value both INSERT and
    exactly one commits. One Core INSERT, no unit of work. With ``savepoint`` (the default) the caller's
    transaction stays usable after a conflict. Hot paths pass ``savepoint=False`` to save its two round trips:
    a conflict then aborts the whole transaction, so ReplayDetected must propagate out of it (it rolls back).
    """
    hmacs = [key_hmac] if isinstance(key_hmac, str) else list(key_hmac)
    values = [{"kind": kind, "key_hmac": one, "expires_at": expires_at} for one in hmacs]
    try:
        if savepoint:
            with session.begin_nested():
                session.execute(_INSERT_ONCE, values)
        else:
            session.execute(_INSERT_ONCE, values)
    except IntegrityError:
        raise ReplayDetected(message, reason=f"{kind}_replay") from None


_INSERT_ONCE = insert(cast(Table, ReplayGuard.__table__))


def purge_expired(session: Session, *, now: datetime) -> int:
    """Remove replay-guard rows, sign-ins in flight and sessions that can no longer matter."""
    total = 0
    for model in (ReplayGuard, LoginRequest, BrokerSession, SamlSession):
        result = session.execute(delete(model).where(model.expires_at < now))
        total += int(getattr(result, "rowcount", 0) or 0)
    total += purge_cli_sign_ins(session, now=now)
    return total


# ---------------------------------------------------------------- audit trail

# The PostgreSQL advisory-lock key that elects one audit sealer at a time across the fleet ("auditsl").
AUDIT_SEALER_LOCK = 0x61756469_74736C


def insert_audit_event(session: Session, *, values: dict[str, Any]) -> int:
    """Insert one event with a single INSERT statement (no ORM unit of work, no shared row lock); returns its
    ``seq``."""
    seq = session.execute(insert(AuditEvent).values(**values).returning(AuditEvent.seq)).scalar_one()
    return int(seq)


def try_lock_audit_sealer(session: Session) -> bool:
    """Elect this transaction as the only sealer until it ends.

    PostgreSQL: a transaction-scoped advisory lock, released at commit or rollback; another process holding it
    makes this return False at once. SQLite: every transaction starts with ``BEGIN IMMEDIATE``
    (``broker.store.db``), so holding the database's write lock already makes this the only sealer.
    """
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(session.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": AUDIT_SEALER_LOCK}).scalar())


def latest_audit_segment(session: Session) -> AuditSegment | None:
    return session.scalars(select(AuditSegment).order_by(AuditSegment.number.desc()).limit(1)).first()


def get_audit_segment(session: Session, *, number: int) -> AuditSegment | None:
    return session.get(AuditSegment, number)


def add_audit_segment(session: Session, *, segment: AuditSegment) -> None:
    session.add(segment)
    session.flush()


def iter_audit_segments(session: Session, *, batch: int = 1000) -> Iterator[AuditSegment]:
    last = -1
    while True:
        rows = session.scalars(
            select(AuditSegment).where(AuditSegment.number > last).order_by(AuditSegment.number).limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].number


def unsealed_audit_events(session: Session, *, limit: int) -> Sequence[AuditEvent]:
    """Committed events not yet in a segment, oldest insertion first."""
    query = select(AuditEvent).where(AuditEvent.segment.is_(None)).order_by(AuditEvent.seq).limit(limit)
    return session.scalars(query).all()


def iter_segment_events(session: Session, *, segment: int, batch: int = 2000) -> Iterator[AuditEvent]:
    """One segment's events in position order (in batches: the legacy segment 0 can be large)."""
    last = -1
    while True:
        query = (
            select(AuditEvent)
            .where(AuditEvent.segment == segment, AuditEvent.position > last)
            .order_by(AuditEvent.position)
            .limit(batch)
        )
        rows = session.scalars(query).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].position or 0


def seal_audit_events(session: Session, *, placements: list[dict[str, Any]]) -> None:
    """Give events their place: each mapping has ``seq``, ``segment``, ``position`` and ``chain``."""
    if not placements:
        return
    table = cast(Table, AuditEvent.__table__)
    statement = (
        update(table)
        .where(table.c.seq == bindparam("at_seq"))
        .values(segment=bindparam("at_segment"), position=bindparam("at_position"), chain=bindparam("at_chain"))
    )
    session.execute(
        statement,
        [
            {"at_seq": p["seq"], "at_segment": p["segment"], "at_position": p["position"], "at_chain": p["chain"]}
            for p in placements
        ],
    )


def duplicate_audit_event_ids(session: Session) -> Sequence[str]:
    query = select(AuditEvent.event_id).group_by(AuditEvent.event_id).having(func.count() > 1).limit(10)
    return session.scalars(query).all()


def iter_audit_events(session: Session, *, batch: int = 1000) -> Iterator[AuditEvent]:
    """Every event in insertion order (``seq``)."""
    last = -1
    while True:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.seq > last).order_by(AuditEvent.seq).limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq


def rekey_audit_events(session: Session, *, macs: list[dict[str, Any]]) -> None:
    """Store events' MACs made under another root key: each mapping has ``seq``, ``mac`` and ``key_id``."""
    if not macs:
        return
    table = cast(Table, AuditEvent.__table__)
    statement = (
        update(table)
        .where(table.c.seq == bindparam("at_seq"))
        .values(mac=bindparam("at_mac"), key_id=bindparam("at_key_id"))
    )
    session.execute(
        statement,
        [{"at_seq": item["seq"], "at_mac": item["mac"], "at_key_id": item["key_id"]} for item in macs],
        execution_options={"synchronize_session": False},
    )


def iter_unsealed_audit_events(session: Session, *, batch: int = 1000) -> Iterator[AuditEvent]:
    last = -1
    while True:
        query = (
            select(AuditEvent)
            .where(AuditEvent.segment.is_(None), AuditEvent.seq > last)
            .order_by(AuditEvent.seq)
            .limit(batch)
        )
        rows = session.scalars(query).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq


def latest_audit_digest(session: Session) -> AuditDigest | None:
    return session.scalars(select(AuditDigest).order_by(AuditDigest.number.desc()).limit(1)).first()


def add_audit_digest(session: Session, *, digest: AuditDigest) -> bool:
    """Record a new digest; False if another process recorded that number first."""
    try:
        with session.begin_nested():
            session.add(digest)
    except IntegrityError:
        return False
    return True


def unpublished_audit_digests(session: Session) -> Sequence[AuditDigest]:
    query = select(AuditDigest).where(AuditDigest.published_at.is_(None)).order_by(AuditDigest.number)
    return session.scalars(query).all()


def mark_audit_digest_published(session: Session, *, number: int, now: datetime) -> None:
    session.execute(update(AuditDigest).where(AuditDigest.number == number).values(published_at=now))


# ---------------------------------------------------------------- signing keys


def list_signing_keys(session: Session, *, now: datetime) -> Sequence[SigningKey]:
    """Keys still published (newest first): the current key and retired keys whose tokens may be live."""
    query = (
        select(SigningKey)
        .where((SigningKey.publish_until.is_(None)) | (SigningKey.publish_until > now))
        .where(SigningKey.revoked_at.is_(None))
        .order_by(SigningKey.generation.desc())
    )
    return session.scalars(query).all()


def all_signing_keys(session: Session) -> Sequence[SigningKey]:
    """Every stored key, newest first, including retired ones no longer published (until they are deleted)."""
    return session.scalars(select(SigningKey).order_by(SigningKey.generation.desc())).all()


def get_signing_key(session: Session, *, kid: str) -> SigningKey | None:
    return session.get(SigningKey, kid)


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


def retire_signing_key(
    session: Session, *, kid: str, retired_at: datetime, publish_until: datetime, revoked: bool = False
) -> None:
    """Stop signing with ``kid``; keep it published until ``publish_until``, or with ``revoked`` never again."""
    session.execute(
        update(SigningKey)
        .where(SigningKey.kid == kid, SigningKey.retired_at.is_(None))
        .values(retired_at=retired_at, publish_until=publish_until, revoked_at=retired_at if revoked else None)
    )


def delete_expired_signing_keys(session: Session, *, now: datetime, revoked_before: datetime | None = None) -> int:
    """Remove keys no live token can need any more; revoked keys once revoked before ``revoked_before``."""
    revoked_gone: ColumnElement[bool] = SigningKey.revoked_at.is_(None)
    if revoked_before is not None:
        revoked_gone = revoked_gone | (SigningKey.revoked_at < revoked_before)
    result = session.execute(
        delete(SigningKey).where(SigningKey.publish_until.is_not(None), SigningKey.publish_until <= now, revoked_gone)
    )
    return int(getattr(result, "rowcount", 0) or 0)


# ---------------------------------------------------------------- MFA held by the broker


def find_principals(session: Session, *, name: str) -> Sequence[Principal]:
    """Principals whose email or username is ``name``, or the one named ``store:subject``."""
    query = select(Principal).where((Principal.email == name) | (Principal.username == name))
    if ":" in name:
        store, subject = name.split(":", 1)
        query = select(Principal).where(
            (Principal.email == name)
            | (Principal.username == name)
            | ((Principal.store == store) & (Principal.subject == subject))
        )
    return session.scalars(query.order_by(Principal.id)).all()


def get_principal(session: Session, *, principal_id: int) -> Principal | None:
    return session.get(Principal, principal_id)


def add_mfa_factor(session: Session, *, factor: MfaFactor) -> bool:
    """Insert a factor; False if the name (per principal) or the WebAuthn credential id is already taken."""
    try:
        with session.begin_nested():
            session.add(factor)
    except IntegrityError:
        return False
    return True


def list_mfa_factors(session: Session, *, principal_id: int, confirmed_only: bool = True) -> Sequence[MfaFactor]:
    query = select(MfaFactor).where(MfaFactor.principal_id == principal_id)
    if confirmed_only:
        query = query.where(MfaFactor.confirmed_at.is_not(None))
    return session.scalars(query.order_by(MfaFactor.id)).all()


def get_mfa_factor(session: Session, *, principal_id: int, factor_id: int) -> MfaFactor | None:
    factor = session.get(MfaFactor, factor_id)
    return factor if factor is not None and factor.principal_id == principal_id else None


def get_mfa_factor_by_credential(session: Session, *, credential_id: str) -> MfaFactor | None:
    return session.scalars(select(MfaFactor).where(MfaFactor.credential_id == credential_id)).one_or_none()


def delete_mfa_factor(session: Session, *, principal_id: int, factor_id: int) -> bool:
    result = session.execute(delete(MfaFactor).where(MfaFactor.id == factor_id, MfaFactor.principal_id == principal_id))
    return bool(getattr(result, "rowcount", 0))


def delete_pending_totp(session: Session, *, principal_id: int) -> None:
    """An unconfirmed enrolment is replaced by a new one (its secret was shown but never proven)."""
    session.execute(
        delete(MfaFactor).where(
            MfaFactor.principal_id == principal_id, MfaFactor.kind == "totp", MfaFactor.confirmed_at.is_(None)
        )
    )


def used_mfa_factor(session: Session, *, factor_id: int, now: datetime, secret_encrypted: str | None = None) -> None:
    """Mark a factor used (and confirmed, on first use); optionally store its secret re-encrypted."""
    values: dict[str, Any] = {"last_used_at": now}
    if secret_encrypted is not None:
        values["secret_encrypted"] = secret_encrypted
    session.execute(update(MfaFactor).where(MfaFactor.id == factor_id).values(**values))
    session.execute(
        update(MfaFactor).where(MfaFactor.id == factor_id, MfaFactor.confirmed_at.is_(None)).values(confirmed_at=now)
    )


def advance_sign_count(session: Session, *, factor_id: int, expected: int, new: int, now: datetime) -> bool:
    """Compare-and-set the WebAuthn signature counter: two racing assertions cannot both move it."""
    result = session.execute(
        update(MfaFactor)
        .where(MfaFactor.id == factor_id, MfaFactor.sign_count == expected)
        .values(sign_count=new, last_used_at=now)
    )
    return bool(getattr(result, "rowcount", 0))


def list_totp_factors(session: Session) -> Sequence[MfaFactor]:
    """Every TOTP factor (for re-encryption under a new key)."""
    return session.scalars(select(MfaFactor).where(MfaFactor.kind == "totp").order_by(MfaFactor.id)).all()


def replace_recovery_codes(session: Session, *, principal_id: int, code_hmacs: Sequence[str], now: datetime) -> None:
    session.execute(delete(MfaRecoveryCode).where(MfaRecoveryCode.principal_id == principal_id))
    session.add_all(
        MfaRecoveryCode(principal_id=principal_id, code_hmac=code_hmac, created_at=now) for code_hmac in code_hmacs
    )
    session.flush()


def use_recovery_code(session: Session, *, principal_id: int, code_hmac: str | Sequence[str], now: datetime) -> bool:
    """Spend a recovery code: one UPDATE guarded by ``used_at IS NULL``, so it works once across processes.
    ``code_hmac`` may list the code's HMAC under every listed root key (``broker.keys``)."""
    hmacs = [code_hmac] if isinstance(code_hmac, str) else list(code_hmac)
    result = session.execute(
        update(MfaRecoveryCode)
        .where(
            MfaRecoveryCode.principal_id == principal_id,
            MfaRecoveryCode.code_hmac.in_(hmacs),
            MfaRecoveryCode.used_at.is_(None),
        )
        .values(used_at=now)
    )
    return bool(getattr(result, "rowcount", 0))


def count_recovery_codes(session: Session, *, principal_id: int) -> int:
    rows = session.scalars(
        select(MfaRecoveryCode.id).where(
            MfaRecoveryCode.principal_id == principal_id, MfaRecoveryCode.used_at.is_(None)
        )
    ).all()
    return len(rows)


def lock_mfa_lockout(session: Session, *, key_hmac: str, scope: str) -> MfaLockout:
    """The failure counter for one principal or address, row-locked for this transaction (created if new)."""
    row = session.get(MfaLockout, key_hmac, with_for_update=True)
    if row is None:
        try:
            with session.begin_nested():
                session.add(MfaLockout(key_hmac=key_hmac, scope=scope, failures=0, lockouts=0))
        except IntegrityError:
            pass  # another process created it first
        row = session.get(MfaLockout, key_hmac, with_for_update=True, populate_existing=True)
        assert row is not None
    return row


def delete_mfa_lockout(session: Session, *, key_hmac: str) -> bool:
    result = session.execute(delete(MfaLockout).where(MfaLockout.key_hmac == key_hmac))
    return bool(getattr(result, "rowcount", 0))


def delete_mfa_state(session: Session, *, principal_id: int) -> int:
    """Remove every factor and recovery code of a principal (operator reset); returns the factors removed."""
    session.execute(delete(MfaRecoveryCode).where(MfaRecoveryCode.principal_id == principal_id))
    result = session.execute(delete(MfaFactor).where(MfaFactor.principal_id == principal_id))
    return int(getattr(result, "rowcount", 0) or 0)


# ---------------------------------------------------------------- temporary privilege and revocation


# get_principal and find_principals are defined above.


def list_principals(session: Session) -> Sequence[Principal]:
    return session.scalars(select(Principal).order_by(Principal.id)).all()


def set_principal_disabled(session: Session, *, principal_id: int, disabled: bool) -> None:
    session.execute(update(Principal).where(Principal.id == principal_id).values(disabled=disabled))


def list_sessions(
    session: Session, *, principal_id: int | None = None, now: datetime | None = None, limit: int = 100
) -> Sequence[BrokerSession]:
    query = select(BrokerSession).order_by(BrokerSession.created_at.desc()).limit(limit)
    if principal_id is not None:
        query = query.where(BrokerSession.principal_id == principal_id)
    if now is not None:
        query = query.where(BrokerSession.expires_at > now, BrokerSession.revoked_at.is_(None))
    return session.scalars(query).all()


def revoke_sessions(session: Session, *, principal_id: int, now: datetime) -> int:
    result = session.execute(
        update(BrokerSession)
        .where(BrokerSession.principal_id == principal_id, BrokerSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def get_issuance(session: Session, *, issuance_id: int) -> Issuance | None:
    return session.get(Issuance, issuance_id)


def find_issuances(
    session: Session,
    *,
    principal_id: int | None = None,
    role_name: str | None = None,
    live_at: datetime | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> Sequence[Issuance]:
    """Issuances, newest first; ``live_at`` keeps those unexpired and unrevoked at that instant."""
    query = select(Issuance).order_by(Issuance.id.desc()).limit(limit)
    if principal_id is not None:
        query = query.where(Issuance.principal_id == principal_id)
    if role_name is not None:
        query = query.where(Issuance.role_name == role_name)
    if live_at is not None:
        query = query.where(Issuance.expires_at > live_at, Issuance.revoked_at.is_(None))
    if since is not None:
        query = query.where(Issuance.issued_at >= since)
    return session.scalars(query).all()


def mark_issuances_revoked(session: Session, *, ids: Sequence[int], now: datetime) -> None:
    if ids:
        session.execute(
            update(Issuance).where(Issuance.id.in_(list(ids)), Issuance.revoked_at.is_(None)).values(revoked_at=now)
        )


def usage_since(session: Session, *, since: datetime) -> list[tuple[str, int, int, datetime]]:
    """(role, principal id, issuances, last issued) for every issuance since ``since``."""
    from sqlalchemy import func

    query = (
        select(Issuance.role_name, Issuance.principal_id, func.count(), func.max(Issuance.issued_at))
        .where(Issuance.issued_at >= since)
        .group_by(Issuance.role_name, Issuance.principal_id)
    )
    return [(str(r), int(p), int(c), last) for r, p, c, last in session.execute(query).all()]


def create_access_request(session: Session, **fields: Any) -> AccessRequestRow:
    row = AccessRequestRow(**fields)
    session.add(row)
    session.flush()
    return row


def get_access_request(session: Session, *, request_id: int, lock: bool = False) -> AccessRequestRow | None:
    return session.get(AccessRequestRow, request_id, with_for_update=lock)


def list_access_requests(
    session: Session,
    *,
    status: str | None = None,
    principal_id: int | None = None,
    role_name: str | None = None,
    limit: int = 100,
) -> Sequence[AccessRequestRow]:
    query = select(AccessRequestRow).order_by(AccessRequestRow.id.desc()).limit(limit)
    if status is not None:
        query = query.where(AccessRequestRow.status == status)
    if principal_id is not None:
        query = query.where(AccessRequestRow.principal_id == principal_id)
    if role_name is not None:
        query = query.where(AccessRequestRow.role_name == role_name)
    return session.scalars(query).all()


def open_grants(session: Session, *, principal_id: int, now: datetime) -> Sequence[AccessRequestRow]:
    """Approved requests whose window is open now."""
    query = select(AccessRequestRow).where(
        AccessRequestRow.principal_id == principal_id,
        AccessRequestRow.status == "approved",
        AccessRequestRow.grant_ends_at > now,
    )
    return session.scalars(query).all()


def open_grants_for(session: Session, *, store: str, subject: str, now: datetime) -> Sequence[AccessRequestRow]:
    principal = session.scalars(
        select(Principal).where(Principal.store == store, Principal.subject == subject)
    ).one_or_none()
    return open_grants(session, principal_id=principal.id, now=now) if principal else []


def due_requests(session: Session, *, now: datetime, limit: int = 100) -> Sequence[AccessRequestRow]:
    """Pending requests past their answer deadline, locked so one process expires each."""
    query = (
        select(AccessRequestRow)
        .where(AccessRequestRow.status == "pending", AccessRequestRow.expires_at <= now)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return session.scalars(query).all()


def due_grants(session: Session, *, now: datetime, limit: int = 100) -> Sequence[AccessRequestRow]:
    """Approved requests whose window has closed, locked so one process ends each."""
    query = (
        select(AccessRequestRow)
        .where(AccessRequestRow.status == "approved", AccessRequestRow.grant_ends_at <= now)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return session.scalars(query).all()


def record_revocation(session: Session, **fields: Any) -> Revocation:
    row = Revocation(**fields)
    session.add(row)
    session.flush()
    return row


def list_revocations(session: Session, *, limit: int = 100) -> Sequence[Revocation]:
    return session.scalars(select(Revocation).order_by(Revocation.id.desc()).limit(limit)).all()


def enqueue_delivery(session: Session, *, kind: str, payload: dict[str, Any], now: datetime) -> WebhookDelivery:
    row = WebhookDelivery(kind=kind, payload=payload, status="pending", attempts=0, next_attempt_at=now, created_at=now)
    session.add(row)
    session.flush()
    return row


def due_deliveries(session: Session, *, now: datetime, limit: int = 20) -> Sequence[WebhookDelivery]:
    """Pending deliveries whose next attempt is due, locked (SKIP LOCKED) so each goes out from one process."""
    query = (
        select(WebhookDelivery)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return session.scalars(query).all()


def list_deliveries(session: Session, *, status: str | None = None, limit: int = 100) -> Sequence[WebhookDelivery]:
    query = select(WebhookDelivery).order_by(WebhookDelivery.id.desc()).limit(limit)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    return session.scalars(query).all()


def remember_network(session: Session, *, principal: str, network: str, now: datetime) -> tuple[bool, bool]:
    """Record that ``principal`` signed in from ``network``; returns (network was new, principal had others)."""
    known = session.scalars(select(PrincipalNetwork.network).where(PrincipalNetwork.principal == principal)).all()
    if network in known:
        return False, True
    try:
        with session.begin_nested():
            session.add(PrincipalNetwork(principal=principal, network=network, first_seen_at=now))
    except IntegrityError:
        return False, True  # another process recorded it first
    return True, bool(known)


def search_audit_events(
    session: Session,
    *,
    event: str | None = None,
    principal: str | None = None,
    outcome: str | None = None,
    reason: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> Sequence[AuditEvent]:
    query = select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(limit)
    if event:
        query = query.where(AuditEvent.event == event)
    if principal:
        query = query.where(AuditEvent.principal == principal)
    if outcome:
        query = query.where(AuditEvent.outcome == outcome)
    if reason:
        query = query.where(AuditEvent.reason == reason)
    if since:
        query = query.where(AuditEvent.occurred_at >= since)
    if until:
        query = query.where(AuditEvent.occurred_at < until)
    return session.scalars(query).all()


def count_audit_events(
    session: Session, *, principal: str, since: datetime, outcome: str | None = None, event: str | None = None
) -> int:
    from sqlalchemy import func

    query = (
        select(func.count())
        .select_from(AuditEvent)
        .where(AuditEvent.principal == principal, AuditEvent.occurred_at >= since)
    )
    if outcome:
        query = query.where(AuditEvent.outcome == outcome)
    if event:
        query = query.where(AuditEvent.event == event)
    return int(session.scalar(query) or 0)


# ---------------------------------------------------------------- credential helper sign-in


def _changed(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def add_device_authorization(session: Session, *, row: DeviceAuthorization) -> bool:
    """Insert a device authorization; False if its user code collides with a live one (unique in the DB)."""
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        return False
    return True


def get_device_authorization(
    session: Session, *, device_code_hmac: str | None = None, user_code_hmac: str | None = None
) -> DeviceAuthorization | None:
    query = select(DeviceAuthorization).execution_options(populate_existing=True)
    if device_code_hmac is not None:
        query = query.where(DeviceAuthorization.device_code_hmac == device_code_hmac)
    elif user_code_hmac is not None:
        query = query.where(DeviceAuthorization.user_code_hmac == user_code_hmac)
    else:
        return None
    return session.scalars(query).one_or_none()


def record_device_poll(session: Session, *, device_code_hmac: str, now: datetime, interval_seconds: int) -> None:
    session.execute(
        update(DeviceAuthorization)
        .where(DeviceAuthorization.device_code_hmac == device_code_hmac)
        .values(last_polled_at=now, interval_seconds=interval_seconds)
        .execution_options(synchronize_session=False)
    )


def move_device_authorization(
    session: Session, *, device_code_hmac: str, from_status: str, to_status: str, **values: Any
) -> bool:
    """Compare-and-set the status: True for exactly one caller, across every broker process."""
    result = session.execute(
        update(DeviceAuthorization)
        .where(DeviceAuthorization.device_code_hmac == device_code_hmac, DeviceAuthorization.status == from_status)
        .values(status=to_status, **values)
        .execution_options(synchronize_session=False)
    )
    return _changed(result) == 1


def add_authorization_code(session: Session, *, row: AuthorizationCode) -> None:
    session.add(row)


def get_authorization_code(session: Session, *, code_hmac: str) -> AuthorizationCode | None:
    return session.get(AuthorizationCode, code_hmac, populate_existing=True)


def consume_authorization_code(session: Session, *, code_hmac: str, now: datetime) -> bool:
    """Mark the code used; True for exactly one caller (RFC 6749 section 4.1.2: a code is used once)."""
    result = session.execute(
        update(AuthorizationCode)
        .where(AuthorizationCode.code_hmac == code_hmac, AuthorizationCode.consumed_at.is_(None))
        .values(consumed_at=now)
        .execution_options(synchronize_session=False)
    )
    return _changed(result) == 1


def link_authorization_code(session: Session, *, code_hmac: str, family_id: str) -> None:
    session.execute(
        update(AuthorizationCode)
        .where(AuthorizationCode.code_hmac == code_hmac)
        .values(family_id=family_id)
        .execution_options(synchronize_session=False)
    )


def create_refresh_family(
    session: Session, *, family: RefreshFamily, token_hmac: str, key_id: str | None = None
) -> None:
    session.add(family)
    session.flush()
    session.add(
        RefreshToken(
            token_hmac=token_hmac, family_id=family.id, generation=0, created_at=family.created_at, key_id=key_id
        )
    )
    session.flush()


def get_refresh_token(
    session: Session, *, token_hmac: str | Sequence[str]
) -> tuple[RefreshToken, RefreshFamily] | None:
    """The token stored under this HMAC, or under any of these (one per listed root key, ``broker.keys``)."""
    hmacs = [token_hmac] if isinstance(token_hmac, str) else list(token_hmac)
    row = session.execute(
        select(RefreshToken, RefreshFamily)
        .join(RefreshFamily, RefreshFamily.id == RefreshToken.family_id)
        .where(RefreshToken.token_hmac.in_(hmacs))
        .limit(1)
        .execution_options(populate_existing=True)
    ).first()
    return (row[0], row[1]) if row is not None else None


def get_refresh_family(session: Session, *, family_id: str) -> RefreshFamily | None:
    return session.get(RefreshFamily, family_id, populate_existing=True)


def rotate_refresh_token(
    session: Session,
    *,
    token_hmac: str,
    family_id: str,
    generation: int,
    new_token_hmac: str,
    now: datetime,
    key_id: str | None = None,
) -> bool:
    """Retire a refresh token and add its successor; False if it was already rotated (a reuse, or a race lost
    to another process: ``(family_id, generation)`` is unique, so only one successor can exist)."""
    result = session.execute(
        update(RefreshToken)
        .where(RefreshToken.token_hmac == token_hmac, RefreshToken.rotated_at.is_(None))
        .values(rotated_at=now)
        .execution_options(synchronize_session=False)
    )
    if _changed(result) != 1:
        return False
    try:
        with session.begin_nested():
            session.add(
                RefreshToken(
                    token_hmac=new_token_hmac, family_id=family_id, generation=generation, created_at=now, key_id=key_id
                )
            )
    except IntegrityError:
        return False
    return True


def revoke_refresh_family(session: Session, *, family_id: str, now: datetime, reason: str) -> bool:
    """Revoke one CLI sign-in (every refresh token of the family); True if it was live."""
    result = session.execute(
        update(RefreshFamily)
        .where(RefreshFamily.id == family_id, RefreshFamily.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason[:64])
        .execution_options(synchronize_session=False)
    )
    return _changed(result) == 1


def revoke_refresh_families_of(session: Session, *, principal_id: int, now: datetime, reason: str) -> int:
    """Revoke every live CLI sign-in of a principal (for administrators); returns how many."""
    result = session.execute(
        update(RefreshFamily)
        .where(RefreshFamily.principal_id == principal_id, RefreshFamily.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason[:64])
        .execution_options(synchronize_session=False)
    )
    return _changed(result)


def purge_cli_sign_ins(session: Session, *, now: datetime) -> int:
    """Remove device authorizations, authorization codes and CLI sign-ins that have ended."""
    total = 0
    for model in (DeviceAuthorization, AuthorizationCode):
        total += _changed(session.execute(delete(model).where(model.expires_at < now)))
    ended = select(RefreshFamily.id).where(RefreshFamily.expires_at < now)
    total += _changed(session.execute(delete(RefreshToken).where(RefreshToken.family_id.in_(ended))))
    total += _changed(session.execute(delete(RefreshFamily).where(RefreshFamily.expires_at < now)))
    return total


def get_delivery(session: Session, *, delivery_id: int) -> WebhookDelivery | None:
    return session.get(WebhookDelivery, delivery_id)


def get_login_request(session: Session, *, state_hmac: str) -> LoginRequest | None:
    """Read a request in flight without consuming it (an operator reset shown before it is approved)."""
    return session.get(LoginRequest, state_hmac)


# ---------------------------------------------------------------- device certificates


def certificate_revoked(session: Session, *, fingerprint: str, issuer: str, serial: str) -> DeviceCertificate | None:
    """The operator's revocation of this certificate (by fingerprint, or by issuer and serial), if any."""
    return session.scalars(
        select(DeviceCertificate)
        .where(
            DeviceCertificate.revoked_at.is_not(None),
            (DeviceCertificate.fingerprint == fingerprint)
            | ((DeviceCertificate.serial == serial) & (DeviceCertificate.issuer == issuer)),
        )
        .limit(1)
    ).first()


def record_certificate_use(
    session: Session,
    *,
    fingerprint: str,
    issuer: str,
    serial: str,
    store: str,
    principal_id: int,
    not_after: datetime,
    now: datetime,
) -> DeviceCertificate:
    row = session.scalars(select(DeviceCertificate).where(DeviceCertificate.fingerprint == fingerprint)).one_or_none()
    if row is None:
        row = DeviceCertificate(
            fingerprint=fingerprint,
            issuer=issuer,
            serial=serial,
            store=store,
            principal_id=principal_id,
            not_after=not_after,
            first_seen_at=now,
        )
        session.add(row)
    row.principal_id = principal_id
    row.last_seen_at = now
    session.flush()
    return row


def find_certificates(
    session: Session, *, serial: str | None = None, issuer: str | None = None, principal_id: int | None = None
) -> Sequence[DeviceCertificate]:
    query = select(DeviceCertificate)
    if serial is not None:
        query = query.where(DeviceCertificate.serial == serial)
    if issuer is not None:
        query = query.where(DeviceCertificate.issuer == issuer)
    if principal_id is not None:
        query = query.where(DeviceCertificate.principal_id == principal_id)
    return session.scalars(query.order_by(DeviceCertificate.id)).all()


def revoke_certificates(session: Session, *, ids: Sequence[int], now: datetime, reason: str) -> None:
    if ids:
        session.execute(
            update(DeviceCertificate)
            .where(DeviceCertificate.id.in_(ids), DeviceCertificate.revoked_at.is_(None))
            .values(revoked_at=now, revoked_reason=reason)
        )


def block_certificate_serial(session: Session, *, issuer: str, serial: str, now: datetime, reason: str) -> None:
    """Refuse a certificate that has never signed in, by its issuer and serial."""
    session.add(
        DeviceCertificate(
            fingerprint=None, issuer=issuer, serial=serial, store="", revoked_at=now, revoked_reason=reason
        )
    )
    session.flush()


# ---------------------------------------------------------------- SAML single logout


def save_saml_session(
    session: Session,
    *,
    session_hmac: str,
    store: str,
    name_id_hmac: str,
    logout: dict[str, Any],
    now: datetime,
    expires_at: datetime,
) -> None:
    session.add(
        SamlSession(
            session_hmac=session_hmac,
            store=store,
            name_id_hmac=name_id_hmac,
            logout=logout,
            created_at=now,
            expires_at=expires_at,
        )
    )


def take_saml_session(session: Session, *, session_hmac: str) -> SamlSession | None:
    """Fetch and delete what a LogoutRequest for this broker session needs (it is sent once)."""
    row = session.get(SamlSession, session_hmac)
    if row is not None:
        session.delete(row)
        session.flush()
    return row


def end_saml_sessions(
    session: Session, *, store: str, name_id_hmac: str, session_indexes: Sequence[str]
) -> list[dict[str, Any]]:
    """End the broker sessions an IdP's LogoutRequest names (core 3.7.3.2): every session of that NameID
    with this store, or only those with one of the given SessionIndex values. Returns their identities."""
    rows = session.scalars(
        select(SamlSession).where(SamlSession.store == store, SamlSession.name_id_hmac == name_id_hmac)
    ).all()
    if session_indexes:
        rows = [r for r in rows if r.logout.get("session_index") in session_indexes]
    hmacs = [r.session_hmac for r in rows]
    if not hmacs:
        return []
    ended = [dict(r.identity) for r in session.scalars(select(BrokerSession).where(BrokerSession.id_hmac.in_(hmacs)))]
    session.execute(delete(BrokerSession).where(BrokerSession.id_hmac.in_(hmacs)))
    session.execute(delete(SamlSession).where(SamlSession.session_hmac.in_(hmacs)))
    return ended


# ---------------------------------------------------------------- SCIM 2.0 provisioning

ScimRow = ScimUser | ScimGroup


def get_scim_user(session: Session, *, store: str, user_id: str, lock: bool = False) -> ScimUser | None:
    query = select(ScimUser).where(ScimUser.store == store, ScimUser.id == user_id)
    return session.scalars(query.with_for_update() if lock else query).one_or_none()


def get_scim_group(session: Session, *, store: str, group_id: str, lock: bool = False) -> ScimGroup | None:
    query = select(ScimGroup).where(ScimGroup.store == store, ScimGroup.id == group_id)
    return session.scalars(query.with_for_update() if lock else query).one_or_none()


def find_scim_users(
    session: Session,
    *,
    store: str,
    user_name_key: str | None = None,
    external_id: str | None = None,
    email_key: str | None = None,
    ids: Sequence[str] | None = None,
) -> Sequence[ScimUser]:
    """A store's provisioned users, narrowed by any of the indexed values given, oldest first."""
    query = select(ScimUser).where(ScimUser.store == store)
    if user_name_key is not None:
        query = query.where(ScimUser.user_name_key == user_name_key)
    if external_id is not None:
        query = query.where(ScimUser.external_id == external_id)
    if email_key is not None:
        query = query.where(ScimUser.email_key == email_key)
    if ids is not None:
        query = query.where(ScimUser.id.in_(list(ids)))
    return session.scalars(query.order_by(ScimUser.created_at, ScimUser.id)).all()


def find_scim_groups(
    session: Session,
    *,
    store: str,
    display_name_key: str | None = None,
    external_id: str | None = None,
    ids: Sequence[str] | None = None,
) -> Sequence[ScimGroup]:
    query = select(ScimGroup).where(ScimGroup.store == store)
    if display_name_key is not None:
        query = query.where(ScimGroup.display_name_key == display_name_key)
    if external_id is not None:
        query = query.where(ScimGroup.external_id == external_id)
    if ids is not None:
        query = query.where(ScimGroup.id.in_(list(ids)))
    return session.scalars(query.order_by(ScimGroup.created_at, ScimGroup.id)).all()


def count_scim_rows(session: Session, *, model: type[ScimRow], store: str) -> int:
    from sqlalchemy import func

    return int(session.scalar(select(func.count()).select_from(model).where(model.store == store)) or 0)


def page_scim_rows(session: Session, *, model: type[ScimRow], store: str, offset: int, limit: int) -> Sequence[ScimRow]:
    query = select(model).where(model.store == store).order_by(model.created_at, model.id).offset(offset).limit(limit)
    rows: Sequence[ScimRow] = session.scalars(query).all()  # type: ignore[assignment]
    return rows


def add_scim_row(session: Session, *, row: ScimRow) -> bool:
    """Insert a user or group; False when its userName or displayName is already taken in its store."""
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        return False
    return True


def save_scim_row(session: Session, *, row: ScimRow) -> bool:
    """Flush changes to a user or group; False when the new userName or displayName is already taken."""
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        session.refresh(row)
        return False
    return True


def delete_scim_row(session: Session, *, row: ScimRow) -> None:
    column = ScimMembership.user_id if isinstance(row, ScimUser) else ScimMembership.group_id
    session.execute(delete(ScimMembership).where(column == row.id))
    session.delete(row)
    session.flush()


def set_scim_members(session: Session, *, group_id: str, members: dict[str, str | None]) -> None:
    """Replace a group's members: user id -> display name as the client sent it."""
    session.execute(delete(ScimMembership).where(ScimMembership.group_id == group_id))
    for user_id in sorted(members):
        session.add(ScimMembership(group_id=group_id, user_id=user_id, display=members[user_id]))
    session.flush()


def scim_members(session: Session, *, group_ids: Sequence[str]) -> dict[str, list[tuple[ScimUser, str | None]]]:
    """Each group's member users (with the display name the client gave), by group id."""
    query = (
        select(ScimMembership.group_id, ScimUser, ScimMembership.display)
        .join(ScimUser, ScimUser.id == ScimMembership.user_id)
        .where(ScimMembership.group_id.in_(list(group_ids)))
        .order_by(ScimUser.user_name_key)
    )
    found: dict[str, list[tuple[ScimUser, str | None]]] = {group_id: [] for group_id in group_ids}
    for group_id, user, display in session.execute(query).all():
        found[group_id].append((user, display))
    return found


def scim_groups_of(session: Session, *, user_ids: Sequence[str]) -> dict[str, list[ScimGroup]]:
    """Each user's groups, by user id."""
    query = (
        select(ScimMembership.user_id, ScimGroup)
        .join(ScimGroup, ScimGroup.id == ScimMembership.group_id)
        .where(ScimMembership.user_id.in_(list(user_ids)))
        .order_by(ScimGroup.display_name_key)
    )
    found: dict[str, list[ScimGroup]] = {user_id: [] for user_id in user_ids}
    for user_id, group in session.execute(query).all():
        found[user_id].append(group)
    return found


def link_scim_user(session: Session, *, user_id: str, principal_id: int, now: datetime) -> None:
    session.execute(update(ScimUser).where(ScimUser.id == user_id).values(principal_id=principal_id, signed_in_at=now))


def list_scim_users(session: Session) -> Sequence[ScimUser]:
    return session.scalars(select(ScimUser).order_by(ScimUser.store, ScimUser.user_name_key)).all()


def principals_of_store(
    session: Session, *, store: str, username: str | None = None, email: str | None = None, subject: str | None = None
) -> Sequence[Principal]:
    """A store's principals whose username or e-mail (case-insensitive) or subject (exact) is the one given."""
    from sqlalchemy import func

    query = select(Principal).where(Principal.store == store)
    if username is not None:
        query = query.where(func.lower(Principal.username) == username.lower())
    if email is not None:
        query = query.where(func.lower(Principal.email) == email.lower())
    if subject is not None:
        query = query.where(Principal.subject == subject)
    return session.scalars(query.order_by(Principal.id)).all()


def end_access_requests_of(session: Session, *, principal_id: int, now: datetime) -> int:
    """Revoke a principal's open just-in-time grants and cancel their pending requests; returns how many."""
    granted = session.execute(
        update(AccessRequestRow)
        .where(
            AccessRequestRow.principal_id == principal_id,
            AccessRequestRow.status == "approved",
            AccessRequestRow.grant_ends_at > now,
        )
        .values(status="revoked", ended_at=now, grant_ends_at=now)
    )
    pending = session.execute(
        update(AccessRequestRow)
        .where(AccessRequestRow.principal_id == principal_id, AccessRequestRow.status == "pending")
        .values(status="cancelled", decided_at=now, decision_note="deprovisioned")
    )
    return _changed(granted) + _changed(pending)
