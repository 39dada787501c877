"""SCIM 2.0 provisioning for one authenticated client: RFC 7644 over the broker's store, and what a change
means for access.

A request is served by scim2-server (validation, PUT and PATCH semantics, filters, paging, ETags, the
discovery endpoints) over :class:`~broker.scim.storage.ProvisioningStorage`. Around it the broker adds:

* authentication: a bearer token per client, compared by its SHA-256 (RFC 6750; only the hash is
  configured), every failure audited (``scim.token_invalid``);
* per-client rights: a users-only client may not read or change groups (``scim.groups_not_allowed``);
* bounded filters: longer than ``scim.max_filter_length`` is refused before parsing (``scim.filter_too_long``);
* one audit event for every change (in the change's transaction) and for every refusal, whose reason is
  ``scim.<scimType>`` (RFC 7644 section 3.12) or ``scim.<status name>``;
* deprovisioning: once a deactivation or deletion has committed, every principal that is that person has
  their broker sessions and CLI sign-ins ended, their live AWS sessions revoked (``broker.revocation``) and
  their just-in-time grants ended; a deletion also removes their broker-held MFA factors, so a person
  re-created later under the same userName starts with nothing of the old one's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from scim2_models import InvalidFilterException, Resource, ResourceType, SCIMException
from scim2_server.handler import ScimHandler
from scim2_server.requests import ScimRequest
from scim2_server.routing import Operation, Target
from scim2_server.service import ScimService

from broker.audit import AuditTrail
from broker.context import Context
from broker.errors import (
    BrokerError,
    ScimConflict,
    ScimError,
    ScimForbidden,
    ScimMethodNotAllowed,
    ScimNotFound,
    ScimNotImplemented,
    ScimPayloadTooLarge,
    ScimPreconditionFailed,
    ScimUnauthorized,
)
from broker.logs import get_logger
from broker.revocation import Actor, Revocations
from broker.scim.resources import GROUP, USER, provider
from broker.scim.storage import Change, ProvisioningStorage, Refused
from broker.settings import ScimClientConfig, ScimSettings
from broker.store import queries
from broker.store.db import Database

log = get_logger("broker.scim")
_ERRORS: dict[int, type[ScimError]] = {
    400: ScimError,
    401: ScimUnauthorized,
    403: ScimForbidden,
    404: ScimNotFound,
    405: ScimMethodNotAllowed,
    409: ScimConflict,
    412: ScimPreconditionFailed,
    413: ScimPayloadTooLarge,
    501: ScimNotImplemented,
}
_STATUS_REASONS = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    412: "precondition_failed",
    413: "payload_too_large",
    501: "not_implemented",
}
# Bearer tokens from `broker scim token` are 48 characters; anything much longer is not one of ours.
MAX_TOKEN_LENGTH = 256


def token_hash(token: str) -> str:
    """The configured form of a client's token (``scim.clients[].token_hash``)."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ScimCall:
    """One HTTP request to ``/scim/v2``, as the web edge read it. ``path`` is relative, e.g. ``/Users/42``."""

    method: str
    base_url: str
    path: str
    query: dict[str, str]
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class ScimAnswer:
    status: int
    body: dict[str, Any] | None
    headers: dict[str, str]


class _BrokerScimService(ScimService):
    """scim2-server's protocol service with the broker's per-client rights."""

    def authorize(self, request: ScimRequest, target: Target, resource_type: ResourceType) -> None:
        client: ScimClientConfig = request.subject
        if resource_type.name == GROUP and not client.groups:
            raise Refused(
                f"Provisioning client {client.name!r} may manage users only; "
                "set `groups: true` on the client to let it manage groups.",
                reason="scim.groups_not_allowed",
            )


class Provisioning:
    """The ``/scim/v2`` use cases. Built once per process by ``broker.services``."""

    def __init__(
        self,
        settings: ScimSettings,
        *,
        db: Database,
        audit: AuditTrail,
        revocations: Revocations,
        clock: Callable[[], datetime],
    ) -> None:
        self.settings = settings
        self.db = db
        self.audit = audit
        self.revocations = revocations
        self.clock = clock
        self.service = _BrokerScimService(provider(settings))
        self.models: dict[str, type[Resource[Any]]] = {
            name: self.service.get_model(self.service.get_resource_type(name)) for name in (USER, GROUP)
        }

    # ------------------------------------------------------------ authentication

    @staticmethod
    def needs_client(call: ScimCall) -> bool:
        """RFC 7644 section 4: the service provider configuration is readable without authentication."""
        path = call.path.rstrip("/").casefold()
        return call.method.upper() != "GET" or path not in ("/serviceproviderconfig", "/serviceproviderconfigs")

    def authenticate(self, authorization: str | None, ctx: Context) -> ScimClientConfig:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.casefold() == "bearer" and token and len(token) <= MAX_TOKEN_LENGTH:
            digest = token_hash(token)
            for client in self.settings.clients:
                if hmac.compare_digest(digest, client.token_hash.get_secret_value()):
                    return client
        reason = "scim.token_missing" if not token else "scim.token_invalid"
        error = ScimUnauthorized(
            "The bearer token is missing or is not a provisioning client's token. "
            "Make one with `broker scim token` and configure its hash.",
            reason=reason,
        )
        raise self.audit.deny(self.db, error, event="scim", ctx=ctx, detail={"scheme": scheme[:32]})

    # ------------------------------------------------------------ serving

    def serve(self, client: ScimClientConfig | None, call: ScimCall, ctx: Context) -> ScimAnswer:
        """Serve one request for ``client`` (None only for the service provider configuration)."""
        request = ScimRequest(
            method=call.method,
            base_url=call.base_url,
            path=call.path,
            query=call.query,
            headers=call.headers,
            body=_without_null_removals(call.body) if call.method.upper() == "PATCH" else call.body,
            subject=client,
        )
        if client is None:
            try:
                with self.service.provider:
                    self.service.route(request, Operation.service_provider_config)
                    return self._answer(self.service.service_provider_config(request.url, request.query))
            except SCIMException as exc:
                raise self._refuse(None, call, exc, ctx) from None
        storage = ProvisioningStorage(
            db=self.db, client=client, models=self.models, audit=self.audit, ctx=ctx, clock=self.clock
        )
        try:
            self._check_filter(call)
            response = ScimHandler(self.service, storage).handle(request)
        except SCIMException as exc:
            raise self._refuse(client, call, exc, ctx) from None
        for change in storage.changes:
            self._deprovision(client, change, ctx)
        return self._answer(response)

    def _check_filter(self, call: ScimCall) -> None:
        """Refuse over-long filters before the parser sees them (query string or a POST .search body)."""
        expressions = [call.query.get("filter")]
        if call.path.rstrip("/").endswith(".search") and call.body:
            try:
                body = json.loads(call.body)
            except ValueError:
                body = None
            if isinstance(body, dict):
                expressions.append(body.get("filter"))
        limit = self.settings.max_filter_length
        for expression in expressions:
            if isinstance(expression, str) and len(expression) > limit:
                error = InvalidFilterException(detail=f"The filter is longer than {limit} characters")
                error.reason = "scim.filter_too_long"  # type: ignore[attr-defined]
                raise error

    @staticmethod
    def _answer(response: Any) -> ScimAnswer:
        headers = dict(response.headers)
        headers.setdefault("Cache-Control", "no-store")
        return ScimAnswer(int(response.status), response.body, headers)

    def _refuse(self, client: ScimClientConfig | None, call: ScimCall, exc: SCIMException, ctx: Context) -> BrokerError:
        status = int(exc.status)
        scim_type = exc.scim_type or None
        reason = getattr(exc, "reason", None) or f"scim.{scim_type or _STATUS_REASONS.get(status, 'invalid')}"
        error = _ERRORS.get(status, ScimError)(exc.detail, scim_type=scim_type, reason=reason)
        return self.audit.deny(
            self.db,
            error,
            event="scim",
            principal=f"scim:{client.name}" if client else None,
            store=client.store if client else None,
            ctx=ctx,
            detail={
                "client": client.name if client else None,
                "method": call.method,
                "path": call.path[:256],
                "status": status,
                "scimType": scim_type,
                "why": exc.detail[:500],
            },
        )

    # ------------------------------------------------------------ what a change means for access

    def _deprovision(self, client: ScimClientConfig, change: Change, ctx: Context) -> None:
        actor = Actor(f"scim:{client.name}", "scim")
        for principal_id in change.principal_ids:
            with self.db.transaction() as session:
                principal = queries.get_principal(session, principal_id=principal_id)
                if principal is None:
                    continue
                name = f"{principal.store}:{principal.subject}"
            why = f"SCIM client {client.name} {change.kind} {change.user_name}"
            try:
                outcome = self.revocations.revoke_principal(actor, name, reason=why, ctx=ctx)
                revocation: dict[str, Any] = outcome.to_json()
            except BrokerError as exc:  # already audited by the revocation
                revocation = {"error": exc.reason}
            now = self.clock()
            with self.db.transaction() as session:
                ended = queries.end_access_requests_of(session, principal_id=principal_id, now=now)
                factors = (
                    queries.delete_mfa_state(session, principal_id=principal_id) if change.kind == "deleted" else 0
                )
                self.audit.append(
                    session,
                    event="scim",
                    outcome="ok",
                    reason=f"principal_{change.kind}",
                    principal=actor.name,
                    store=client.store,
                    ctx=ctx,
                    detail={
                        "client": client.name,
                        "userName": change.user_name,
                        "target": name,
                        "revocation": revocation,
                        "access_requests_ended": ended,
                        "mfa_factors_removed": factors,
                    },
                )
            log.info("deprovisioned", client=client.name, kind=change.kind, principal_id=principal_id)


def _without_null_removals(body: bytes) -> bytes:
    """Entra ID removes members with ``{"op": "Remove", "path": "members", "value": [{"$ref": null, "value":
    "<id>"}]}``; the null ``$ref`` is "no value", not a value to match, so it is dropped before matching.
    Anything that is not such a body passes unchanged (the library validates it)."""
    try:
        message = json.loads(body)
    except ValueError:
        return body
    operations = message.get("Operations") if isinstance(message, dict) else None
    if not isinstance(operations, list):
        return body
    for operation in operations:
        if not isinstance(operation, dict) or str(operation.get("op", "")).casefold() != "remove":
            continue
        value = operation.get("value")
        if isinstance(value, list):
            operation["value"] = [
                {k: v for k, v in entry.items() if v is not None} if isinstance(entry, dict) else entry
                for entry in value
            ]
    return json.dumps(message).encode()
