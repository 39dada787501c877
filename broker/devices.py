"""Devices and workloads that sign in with a certificate: verify, check revocations, decide, issue, audit.

Two ways in share this use case: an RFC 7523 assertion carrying the chain in ``x5c``
(``broker.oauth.jwt_bearer``) and mutual TLS, at the broker or at a trusted proxy (``broker.web.devices``).
Each proves possession of the key its own way and hands over the presented chain; from there the sequence
is the same, top to bottom: size limits, path validation and mapping (``broker.connectors.x509``), the
operator's certificate revocations, the role decision, single-use proof, then ``Issuance.issue`` (STS,
issuance row and audit event committed together).

Every decision is audited with the certificate's fingerprint, issuer and serial: a refusal as one
``device_sign_in`` event, an issuance as the ``credentials`` event with those fields under ``device``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker import certificates
from broker.audit import AuditTrail
from broker.connectors.x509 import (
    CertificateFacts,
    VerifiedCertificate,
    X509Connector,
    leaf_facts,
    parse_chain,
    refuse,
)
from broker.context import Clock, Context
from broker.errors import BrokerError, InvalidRequest, InvalidTarget, NotFound
from broker.http import HttpClient
from broker.identity import Channel
from broker.issuance import ActiveGrants, Issue
from broker.policy import AccessRequest, decide
from broker.revocation import Actor, RevocationOutcome, Revocations
from broker.settings import RoleConfig, Settings, X509StoreConfig
from broker.store import queries
from broker.store.db import Database

if TYPE_CHECKING:
    from broker.store.db import Session
    from broker.store.models import DeviceCertificate

# The broker's own token type URI for AWS credentials, as in the token exchange response.
TOKEN_TYPE_AWS_CREDENTIALS = "urn:identity-broker:params:oauth:token-type:aws-credentials"  # noqa: S105
EVENT = "device_sign_in"


@dataclass(frozen=True)
class DeviceRequest:
    """What the device asks for: one role, by name (``audience``/``role``) or ARN (``resource``)."""

    targets: tuple[str, ...]
    duration_seconds: int | None = None

    @classmethod
    def of(cls, targets: Sequence[str], duration: str | None) -> DeviceRequest:
        if duration is not None and (not duration.isdigit() or len(duration) > 6):
            raise InvalidRequest("duration_seconds must be a number of seconds.", reason="duration_invalid")
        return cls(tuple(targets), int(duration) if duration else None)


class Devices:
    """Certificate sign-in for every ``type: x509`` store; one per process, thread-safe."""

    def __init__(
        self,
        settings: Settings,
        *,
        db: Database,
        audit: AuditTrail,
        clock: Clock,
        issue: Issue,
        active_grants: ActiveGrants,
        http: HttpClient,
    ) -> None:
        self.settings = settings
        self.db = db
        self.audit = audit
        self.clock = clock
        self.issue = issue
        self.active_grants = active_grants
        self.connectors = [
            X509Connector(s, http=http) for s in settings.identity_stores if isinstance(s, X509StoreConfig)
        ]
        self.max_chain = max((c.config.max_chain_certificates for c in self.connectors), default=1)

    @property
    def enabled(self) -> bool:
        return bool(self.connectors)

    def sign_in(
        self,
        ders: Sequence[bytes],
        request: DeviceRequest,
        *,
        proof: str,
        ctx: Context,
        prove: Callable[[certificates.Certificate, X509StoreConfig | None], dict[str, Any]] | None = None,
        consume: Callable[[CertificateFacts], None] | None = None,
        detail: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The whole sequence. ``prove`` checks possession against the leaf before anything is trusted (it
        returns audit detail); ``consume`` spends a single-use proof once every other check passed."""
        audit: dict[str, Any] = {"proof": proof, **(detail or {})}
        verified: VerifiedCertificate | None = None
        presented = leaf_facts(ders)
        if presented is not None:
            audit.update(presented.to_json())
        try:
            chain = parse_chain(ders, max_certificates=self.max_chain)
            facts = CertificateFacts.of(chain[0])
            if prove is not None:
                audit.update(prove(chain[0], self._store_for(chain[0])))
            verified = self._verify(chain)
            audit.update(verified.audit())
            role = self._plan(verified, request, ctx)
            audit["role"] = role.name
            self._check_and_record(verified)
            if consume is not None:
                consume(facts)
        except BrokerError as exc:
            raise self.audit.deny(
                self.db,
                exc,
                event=EVENT,
                identity=verified.identity if verified else None,
                channel=Channel.SERVICE.value,
                ctx=ctx,
                detail=audit,
            ) from None
        issued = self.issue(
            verified.identity,
            role=role.name,
            channel=Channel.SERVICE,
            ctx=ctx,
            duration_seconds=request.duration_seconds,
            audit_detail={"device": audit},
        )
        credentials = issued.credentials
        expires_in = int((credentials.expiration - self.clock()).total_seconds())
        return {
            "access_token": credentials.session_token,
            "issued_token_type": TOKEN_TYPE_AWS_CREDENTIALS,
            "token_type": "N_A",
            "expires_in": max(expires_in, 0),
            "aws_credentials": credentials.process_json(),
            "role_arn": role.role_arn,
            "assumed_role_arn": credentials.assumed_role_arn,
        }

    def deny(self, error: BrokerError, *, ctx: Context, detail: dict[str, Any]) -> BrokerError:
        """Audit a refusal that happened before a certificate could be read (one event), and return it."""
        return self.audit.deny(self.db, error, event=EVENT, channel=Channel.SERVICE.value, ctx=ctx, detail=detail)

    # ------------------------------------------------------------ steps

    def _store_for(self, leaf: certificates.Certificate) -> X509StoreConfig | None:
        """The assertion limits that apply before the path names the store: the strictest store's."""
        configs = [c.config for c in self.connectors]
        return min(configs, key=lambda c: (c.max_assertion_lifetime_seconds, c.clock_skew_seconds), default=None)

    def _verify(self, chain: Sequence[certificates.Certificate]) -> VerifiedCertificate:
        now = self.clock()
        errors: list[BrokerError] = []
        for connector in self.connectors:
            if len(chain) > connector.config.max_chain_certificates:
                errors.append(refuse("chain_too_large", "its chain holds too many certificates for this store"))
                continue
            try:
                return connector.verify(chain, now)
            except BrokerError as exc:
                errors.append(exc)
        if not errors:
            raise refuse("untrusted_chain", "no certificate store is configured")
        # The most specific refusal: one store recognised the chain and found a concrete problem.
        raise next((e for e in errors if e.reason != "x509.untrusted_chain"), errors[0])

    def _plan(self, verified: VerifiedCertificate, request: DeviceRequest, ctx: Context) -> RoleConfig:
        if len(request.targets) != 1:
            if not request.targets:
                raise InvalidRequest(
                    "Name the role with role (or audience) or its ARN with resource.", reason="target_missing"
                )
            raise InvalidTarget("Ask for one role per request.", reason="target_multiple")
        target = request.targets[0]
        role = next((r for r in self.settings.roles if target in (r.name, r.role_arn)), None)
        if role is None:
            raise InvalidTarget("There is no such role.", reason="role_unknown")
        decision = decide(
            verified.identity,
            self.settings.roles,
            AccessRequest(
                role=role.name,
                channel=Channel.SERVICE,
                duration_seconds=request.duration_seconds,
                client_ip=ctx.client_ip,
                role_chaining=self.settings.aws.role_chaining,
            ),
            self.clock(),
            active_grants=self.active_grants(verified.identity, role.name),
        )
        if not decision.allowed:
            raise InvalidTarget("This device may not use this role.", reason=decision.reason)
        return role

    def _check_and_record(self, verified: VerifiedCertificate) -> None:
        """Refuse a certificate an operator revoked; otherwise remember it against its principal."""
        facts, now = verified.facts, self.clock()
        with self.db.transaction() as session:
            revoked = queries.certificate_revoked(
                session, fingerprint=facts.fingerprint, issuer=facts.issuer, serial=facts.serial
            )
            if revoked is not None:
                raise refuse("revoked_by_operator", "an operator revoked it (`broker revoke certificate`)")
            principal = queries.upsert_principal(session, identity=verified.identity, now=now)
            queries.record_certificate_use(
                session,
                fingerprint=facts.fingerprint,
                issuer=facts.issuer,
                serial=facts.serial,
                store=verified.identity.store,
                principal_id=principal.id,
                not_after=verified.leaf.not_valid_after_utc,
                now=now,
            )


class DeviceRevocations:
    """``broker revoke certificate`` and ``broker revoke device``: the certificate is refused from now on, and
    the live AWS sessions of the device it signed in as end through the ordinary revocation path."""

    def __init__(self, *, db: Database, audit: AuditTrail, revocations: Revocations, clock: Clock) -> None:
        self.db = db
        self.audit = audit
        self.revocations = revocations
        self.clock = clock

    def _refuse(self, actor: Actor, error: BrokerError, ctx: Context, target: str) -> BrokerError:
        return self.audit.deny(
            self.db,
            error,
            event="revocation",
            principal=actor.name,
            store=actor.store,
            ctx=ctx,
            detail={"target": target[:256]},
        )

    def revoke_certificate(
        self, actor: Actor, serial: str, *, issuer: str | None, reason: str, ctx: Context
    ) -> dict[str, Any]:
        serial = serial.lower().removeprefix("0x").replace(":", "")
        if not serial or any(c not in "0123456789abcdef" for c in serial) or len(serial) > 64:
            raise self._refuse(
                actor, InvalidRequest("Give the serial in hexadecimal.", reason="serial_invalid"), ctx, serial
            )
        now = self.clock()
        # Refusals are audited after the read transaction ends (SQLite allows one writer at a time).
        refusal: BrokerError | None = None
        names: list[str] = []
        with self.db.transaction() as session:
            rows = queries.find_certificates(session, serial=serial, issuer=issuer)
            issuers = {r.issuer for r in rows}
            if len(issuers) > 1:
                refusal = InvalidRequest(
                    f"Certificates from {len(issuers)} issuers have serial {serial}; pass --issuer.",
                    reason="serial_ambiguous",
                )
            elif not rows and issuer is None:
                refusal = NotFound(
                    f"No certificate with serial {serial} has signed in. Pass --issuer to refuse it anyway.",
                    reason="certificate_unknown",
                )
            else:
                if not rows:
                    assert issuer is not None
                    queries.block_certificate_serial(session, issuer=issuer, serial=serial, now=now, reason=reason)
                queries.revoke_certificates(session, ids=[r.id for r in rows], now=now, reason=reason)
                principal_ids = sorted({r.principal_id for r in rows if r.principal_id is not None})
                principals = [queries.get_principal(session, principal_id=p) for p in principal_ids]
                names = [f"{p.store}:{p.subject}" for p in principals if p is not None]
                self._record(
                    session, actor, "certificate", rows, names, serial=serial, issuer=issuer, why=reason, ctx=ctx
                )
        if refusal is not None:
            raise self._refuse(actor, refusal, ctx, serial)
        return self._end_sessions(actor, names, reason=f"certificate {serial} revoked: {reason}", ctx=ctx) | {
            "certificates": len(rows) or 1,
            "serial": serial,
        }

    def revoke_device(self, actor: Actor, principal: str, *, reason: str, ctx: Context) -> dict[str, Any]:
        now = self.clock()
        refusal: BrokerError | None = None
        name = ""
        with self.db.transaction() as session:
            found = queries.find_principals(session, name=principal)
            rows = queries.find_certificates(session, principal_id=found[0].id) if len(found) == 1 else []
            if len(found) != 1:
                refusal = NotFound(f"No single device named {principal!r}.", reason="principal_unknown")
            elif not rows:
                refusal = NotFound(f"{principal!r} never signed in with a certificate.", reason="certificate_unknown")
            else:
                queries.revoke_certificates(session, ids=[r.id for r in rows], now=now, reason=reason)
                name = f"{found[0].store}:{found[0].subject}"
                self._record(session, actor, "device", rows, [name], serial=None, issuer=None, why=reason, ctx=ctx)
        if refusal is not None:
            raise self._refuse(actor, refusal, ctx, principal)
        return self._end_sessions(actor, [name], reason=f"device revoked: {reason}", ctx=ctx) | {
            "certificates": len(rows)
        }

    def _record(
        self,
        session: Session,
        actor: Actor,
        scope: str,
        rows: Sequence[DeviceCertificate],
        devices: list[str],
        *,
        serial: str | None,
        issuer: str | None,
        why: str,
        ctx: Context,
    ) -> None:
        self.audit.append(
            session,
            event="revocation",
            outcome="ok",
            reason=f"revoked_{scope}",
            principal=actor.name,
            store=actor.store,
            ctx=ctx,
            detail={
                "scope": scope,
                "serial": serial,
                "issuer": issuer,
                "certificates": [{"fingerprint": r.fingerprint, "issuer": r.issuer, "serial": r.serial} for r in rows],
                "devices": devices,
                "why": why[:1000],
            },
        )

    def _end_sessions(self, actor: Actor, principals: list[str], *, reason: str, ctx: Context) -> dict[str, Any]:
        outcomes: list[RevocationOutcome] = [
            self.revocations.revoke_principal(actor, name, reason=reason, ctx=ctx) for name in principals
        ]
        return {"devices": principals, "revocations": [o.to_json() for o in outcomes]}
