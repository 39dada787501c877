"""OAuth 2.0 Token Exchange (RFC 8693): a workload's platform token for a broker token or AWS credentials.

Request (RFC 8693 section 2.1): ``subject_token`` + ``subject_token_type`` (``...:token-type:jwt`` or
``...:token-type:access_token``), optional ``actor_token`` + ``actor_token_type`` for delegation,
``audience``/``resource`` naming the target, ``scope``, ``requested_token_type``:

- ``urn:ietf:params:oauth:token-type:access_token`` (the default): a broker-signed RFC 9068 access token
  for one internal service; ``audience`` (or ``resource``) names it, an ``oauth.audiences`` binding must
  grant it, and ``scope`` may not exceed the binding's scopes;
- :data:`TOKEN_TYPE_AWS_CREDENTIALS`: STS credentials for the role named by ``audience`` (role name) or
  ``resource`` (role ARN), decided by the same pure policy as for people, issued with channel ``service``
  and the workload as SourceIdentity.

Delegation (RFC 8693 section 4.4): an ``actor_token`` is accepted only if the subject token's ``may_act``
claim names the actor (its ``sub`` and, if given, ``iss``); the issued token records the actor in ``act``
(section 4.1), nesting any ``act`` the subject token already carried.

Errors (section 2.2.2): a subject or actor token that is invalid or unacceptable by policy MUST be
``invalid_request``; a target the broker will not issue for is ``invalid_target``; too much scope is
RFC 6749's ``invalid_scope``. Every refusal is audited exactly once, with a reason naming the failed check.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from broker.audit import AuditTrail
from broker.context import Clock, Context
from broker.errors import (
    AuditUnavailable,
    BrokerError,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    ReplayDetected,
)
from broker.identity import Channel
from broker.issuance import Issue
from broker.keys import Keys
from broker.oauth.clients import AuthenticatedClient
from broker.oauth.grants import Params
from broker.oauth.tokens import TokenService
from broker.oauth.workload import (
    TOKEN_TYPE_ACCESS_TOKEN,
    VerifiedWorkload,
    WorkloadVerifier,
)
from broker.policy import AccessRequest, decide, decide_audience
from broker.settings import TOKEN_EXCHANGE_GRANT, RoleConfig, Settings
from broker.store import queries
from broker.store.db import Database

if TYPE_CHECKING:
    from broker.store.db import Session

GRANT_TYPE = TOKEN_EXCHANGE_GRANT
# The broker's own token type URI for AWS credentials (RFC 8693 section 3 lets an implementation define
# its own): the response then carries the STS credential fields.
TOKEN_TYPE_AWS_CREDENTIALS = "urn:identity-broker:params:oauth:token-type:aws-credentials"  # noqa: S105
ISSUABLE_TOKEN_TYPES = (TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_AWS_CREDENTIALS)
MAX_SCOPES, MAX_TARGET_CHARS = 32, 2048
# A jti is remembered a little beyond the token's expiry, covering the verifier's clock-skew allowance.
REPLAY_MARGIN = timedelta(minutes=5)


@dataclass(frozen=True)
class ExchangeRequest:
    """The parsed RFC 8693 request (section 2.1)."""

    subject_token: str
    subject_token_type: str
    actor_token: str | None
    actor_token_type: str | None
    targets: tuple[str, ...]
    scopes: tuple[str, ...] | None
    requested_token_type: str

    @classmethod
    def parse(cls, params: Params) -> ExchangeRequest:
        subject_token, subject_type = params.get("subject_token"), params.get("subject_token_type")
        if subject_token is None or subject_type is None:
            raise InvalidRequest("subject_token and subject_token_type are required.", reason="subject_token_missing")
        actor_token, actor_type = params.get("actor_token"), params.get("actor_token_type")
        if (actor_token is None) != (actor_type is None):
            # Section 2.1: actor_token_type is REQUIRED when actor_token is present, and MUST NOT be otherwise.
            raise InvalidRequest("actor_token and actor_token_type go together.", reason="actor_token_type_missing")
        targets = params.all("audience") + params.all("resource")
        if any(len(t) > MAX_TARGET_CHARS for t in targets):
            raise InvalidRequest("audience or resource is too long.", reason="target_too_long")
        scope = params.get("scope")
        scopes = tuple(scope.split()) if scope is not None else None
        if scopes is not None and len(scopes) > MAX_SCOPES:
            raise InvalidRequest("Too many scopes.", reason="scope_too_many")
        requested = params.get("requested_token_type") or TOKEN_TYPE_ACCESS_TOKEN
        if requested not in ISSUABLE_TOKEN_TYPES:
            raise InvalidRequest(
                f"requested_token_type must be one of {list(ISSUABLE_TOKEN_TYPES)}.",
                reason="requested_token_type_unsupported",
            )
        return cls(subject_token, subject_type, actor_token, actor_type, targets, scopes, requested)


@dataclass(frozen=True)
class _Plan:
    """What the exchange will issue, once every check passed."""

    subject: VerifiedWorkload
    actor: VerifiedWorkload | None
    act: dict[str, Any] | None
    audience: str | None = None
    scopes: tuple[str, ...] = ()
    ttl_seconds: int | None = None
    role: RoleConfig | None = None


class TokenExchangeGrant:
    """``grant_type=urn:ietf:params:oauth:grant-type:token-exchange``."""

    grant_type = GRANT_TYPE

    def __init__(
        self,
        settings: Settings,
        *,
        db: Database,
        audit: AuditTrail,
        keys: Keys,
        clock: Clock,
        issue: Issue,
        verifier: WorkloadVerifier,
        tokens: TokenService,
    ) -> None:
        self.settings = settings
        self.db = db
        self.audit = audit
        self.keys = keys
        self.clock = clock
        # Decides again (the same pure policy), calls STS and commits issuance + audit together.
        self.issue = issue
        self.verifier = verifier
        self.tokens = tokens

    def handle(self, params: Params, client: AuthenticatedClient | None, ctx: Context) -> dict[str, Any]:
        subject: VerifiedWorkload | None = None
        detail: dict[str, Any] = {"client_id": client.client_id if client else None}
        try:
            request = ExchangeRequest.parse(params)
            detail["requested_token_type"] = request.requested_token_type
            detail["target"] = list(request.targets)
            subject = self.verifier.verify(request.subject_token, token_type=request.subject_token_type)
            detail["subject_jti"] = subject.jti
            actor = None
            if request.actor_token is not None:
                assert request.actor_token_type is not None
                actor = self.verifier.verify(request.actor_token, token_type=request.actor_token_type)
                detail["actor"] = actor.principal
            act = self._act(subject, actor)
            plan = self._plan(request, subject, actor, act, ctx)
            if plan.role is not None:
                # STS is called only for a token not used before: its jti is spent first, on its own.
                with self.db.transaction() as session:
                    self._consume(session, subject, actor)
        except BrokerError as exc:
            raise self._deny(exc, subject, ctx, detail) from None
        if plan.role is not None:
            return self._aws_credentials(plan, ctx, detail)
        return self._access_token(plan, client, ctx, detail)

    def _deny(
        self, error: BrokerError, subject: VerifiedWorkload | None, ctx: Context, detail: dict[str, Any]
    ) -> BrokerError:
        return self.audit.deny(
            self.db,
            error,
            event="token_exchange",
            identity=subject.identity if subject else None,
            channel=Channel.SERVICE.value,
            ctx=ctx,
            detail=detail,
        )

    # ------------------------------------------------------------ checks

    @staticmethod
    def _act(subject: VerifiedWorkload, actor: VerifiedWorkload | None) -> dict[str, Any] | None:
        """RFC 8693 section 4.4: the actor must be named by the subject's ``may_act``."""
        if actor is None:
            return dict(subject.act) if subject.act else None
        may_act = subject.may_act
        if may_act is None:
            raise InvalidRequest(
                "The subject token does not allow delegation (no may_act claim).", reason="may_act_missing"
            )
        if may_act.get("sub") != actor.identity.subject or (
            "iss" in may_act and may_act.get("iss") != actor.identity.issuer
        ):
            raise InvalidRequest("The subject token's may_act does not name this actor.", reason="may_act_violation")
        act: dict[str, Any] = {"sub": actor.identity.subject, "iss": actor.identity.issuer}
        if subject.act:
            act["act"] = dict(subject.act)
        return act

    def _plan(
        self,
        request: ExchangeRequest,
        subject: VerifiedWorkload,
        actor: VerifiedWorkload | None,
        act: dict[str, Any] | None,
        ctx: Context,
    ) -> _Plan:
        if len(request.targets) != 1:
            if not request.targets:
                raise InvalidRequest("Name the target with audience or resource.", reason="target_missing")
            raise InvalidTarget("Ask for one audience or role per exchange.", reason="target_multiple")
        target = request.targets[0]
        identity = subject.identity
        if request.requested_token_type == TOKEN_TYPE_AWS_CREDENTIALS:
            if request.scopes:
                raise InvalidScope(
                    "AWS credentials take no scope; the role defines them.", reason="scope_not_applicable"
                )
            role = next((r for r in self.settings.roles if target in (r.name, r.role_arn)), None)
            if role is None:
                raise InvalidTarget("There is no such role.", reason="role_unknown")
            decision = decide(
                identity,
                self.settings.roles,
                AccessRequest(
                    role=role.name,
                    channel=Channel.SERVICE,
                    client_ip=ctx.client_ip,
                    role_chaining=self.settings.aws.role_chaining,
                ),
                self.clock(),
            )
            if not decision.allowed:
                raise InvalidTarget("This workload may not use this role.", reason=decision.reason)
            return _Plan(subject, actor, act, role=role)
        audience = decide_audience(identity, self.settings.oauth.audiences, target, request.scopes)
        if not audience.allowed:
            if audience.reason == "scope_not_granted":
                raise InvalidScope(reason=audience.reason)
            raise InvalidTarget(reason=audience.reason)
        return _Plan(subject, actor, act, audience=target, scopes=audience.scopes, ttl_seconds=audience.ttl_seconds)

    def _consume(self, session: Session, subject: VerifiedWorkload, actor: VerifiedWorkload | None) -> None:
        """Single-use ``jti``: the database's unique key decides, across every broker process."""
        for token in (subject, actor):
            if token is None or not token.single_use or token.jti is None:
                continue
            try:
                queries.consume_once(
                    session,
                    kind="jti",
                    key_hmac=self.keys.macs("workload-jti", f"{token.identity.issuer}\n{token.jti}"),
                    expires_at=token.expires_at + REPLAY_MARGIN,
                    savepoint=False,  # a replay abandons the whole transaction
                )
            except ReplayDetected:
                raise InvalidRequest("This token was already exchanged.", reason="jti_replay") from None

    # ------------------------------------------------------------ issuing

    def _access_token(
        self, plan: _Plan, client: AuthenticatedClient | None, ctx: Context, detail: dict[str, Any]
    ) -> dict[str, Any]:
        assert plan.audience is not None
        issued = self.tokens.issue_access_token(
            subject=plan.subject.principal,
            audience=plan.audience,
            client_id=client.client_id if client else plan.subject.principal,
            scope=plan.scopes,
            act=plan.act,
            ttl_seconds=plan.ttl_seconds,
        )
        # One transaction spends the jti and appends the audit event: the token leaves only if both commit
        # (fail closed), and a replay commits neither.
        try:
            with self.db.transaction() as session:
                self._consume(session, plan.subject, plan.actor)
                self.audit.append(
                    session,
                    event="token_exchange",
                    outcome="ok",
                    reason="issued",
                    identity=plan.subject.identity,
                    channel=Channel.SERVICE.value,
                    ctx=ctx,
                    detail={
                        **detail,
                        "audience": plan.audience,
                        "scope": list(plan.scopes),
                        "jti": issued.jti,
                        "kid": issued.kid,
                        "act": plan.act,
                        "expires_at": issued.expires_at.isoformat(),
                    },
                )
        except InvalidRequest as exc:
            raise self._deny(exc, plan.subject, ctx, detail) from None
        except BrokerError as exc:
            raise AuditUnavailable() from exc
        response: dict[str, Any] = {
            "access_token": issued.token,
            "issued_token_type": TOKEN_TYPE_ACCESS_TOKEN,
            "token_type": "Bearer",
            "expires_in": issued.expires_in,
        }
        if plan.scopes:
            response["scope"] = " ".join(plan.scopes)
        return response

    def _aws_credentials(self, plan: _Plan, ctx: Context, detail: dict[str, Any]) -> dict[str, Any]:
        assert plan.role is not None
        issued = self.issue(
            plan.subject.identity,
            role=plan.role.name,
            channel=Channel.SERVICE,
            ctx=ctx,
            audit_detail={"exchange": "rfc8693", "act": plan.act, "subject_jti": plan.subject.jti},
        )
        credentials = issued.credentials
        expires_in = int((credentials.expiration - self.clock()).total_seconds())
        return {
            # RFC 8693 section 2.2.1: access_token is REQUIRED; "N_A" says it is not an OAuth access token.
            "access_token": credentials.session_token,
            "issued_token_type": TOKEN_TYPE_AWS_CREDENTIALS,
            "token_type": "N_A",
            "expires_in": max(expires_in, 0),
            "aws_credentials": credentials.process_json(),
            "role_arn": plan.role.role_arn,
            "assumed_role_arn": credentials.assumed_role_arn,
        }
