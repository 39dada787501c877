"""The credential helper's API (``/api/v1``), authorized by a broker access token (RFC 6750 bearer).

Every issuance goes through ``Issuance.issue``: the same policy, MFA check, STS call and audit as the portal,
with channel ``cli`` and the identity (and MFA level) captured when the helper signed in.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from broker.context import Context
from broker.errors import BrokerError, InvalidRequest
from broker.identity import Channel
from broker.oauth.refresh import API_PATH, CliSignIn
from broker.services import Services
from broker.web.deps import ContextDep, ServicesDep
from broker.web.oauth import NO_STORE, OAuthDep

router = APIRouter(prefix=API_PATH, tags=["credential helper API"])
MAX_BODY_BYTES = 4096


def get_cli_sign_in(request: Request, oauth: OAuthDep, ctx: ContextDep) -> CliSignIn:
    signed_in = oauth.cli.authenticate(request.headers.get("authorization"), ctx)
    request.state.principal = signed_in.identity.principal
    return signed_in


CliSignInDep = Annotated[CliSignIn, Depends(get_cli_sign_in)]


async def _raw_body(request: Request) -> bytes:
    """The request body, read on the event loop (at most a little over ``MAX_BODY_BYTES``)."""
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_BODY_BYTES:
            break
    return bytes(body)


RawBody = Annotated[bytes, Depends(_raw_body)]


def _role_request(
    body: bytes, services: Services, signed_in: CliSignIn, ctx: Context, event: str
) -> tuple[str, int | None]:
    """``{"role": str, "duration_seconds": int?}``; anything else is refused and audited."""
    try:
        if len(body) > MAX_BODY_BYTES:
            raise InvalidRequest("The request is too large.", reason="api_body_too_large")
        try:
            data: Any = json.loads(body)
        except ValueError:
            raise InvalidRequest("Send a JSON object.", reason="api_body_not_json") from None
        if not isinstance(data, dict) or set(data) - {"role", "duration_seconds"}:
            raise InvalidRequest('Send {"role": ..., "duration_seconds": ...} only.', reason="api_body_shape")
        role, duration = data.get("role"), data.get("duration_seconds")
        if not isinstance(role, str) or not 0 < len(role) <= 64:
            raise InvalidRequest("role must be a role name.", reason="api_role_invalid")
        if duration is not None and (isinstance(duration, bool) or not isinstance(duration, int)):
            raise InvalidRequest("duration_seconds must be a whole number.", reason="api_duration_invalid")
    except BrokerError as exc:
        raise services.audit.deny(
            services.db, exc, event=event, identity=signed_in.identity, channel=Channel.CLI.value, ctx=ctx
        ) from None
    return role, duration


@router.get("/roles", summary="The roles the signed-in person may use")
def roles(services: ServicesDep, signed_in: CliSignInDep) -> JSONResponse:
    settings = services.settings
    views = services.issuance.roles_for(signed_in.identity)
    return JSONResponse(
        {
            "principal": signed_in.identity.principal,
            "mfa": signed_in.identity.mfa.level.label,
            "roles": [
                {
                    "name": view.role.name,
                    "account": view.role.account,
                    "account_name": view.role.account_name,
                    "description": view.role.description,
                    "max_duration_seconds": view.max_duration_seconds,
                    "usable": view.usable,
                    "missing": view.missing,
                }
                for view in views
            ],
            # What `broker configure-aws` writes into each profile: the region, and in dev mode the local AWS
            # emulator's endpoint (in production the SDKs' own endpoints are right).
            "aws": {
                "region": settings.aws.region,
                "endpoint_url": settings.aws.sts_endpoint_url if settings.dev else None,
            },
        },
        headers=NO_STORE,
    )


# Plain ``def`` routes: FastAPI runs them in its thread pool, so STS and the database never block the event loop.
@router.post("/credentials", summary="STS credentials in the AWS credential_process format")
def credentials(services: ServicesDep, signed_in: CliSignInDep, ctx: ContextDep, body: RawBody) -> JSONResponse:
    role, duration = _role_request(body, services, signed_in, ctx, "credentials")
    issued = services.issuance.issue(
        signed_in.identity,
        role=role,
        channel=Channel.CLI,
        ctx=ctx,
        duration_seconds=duration,
        audit_detail={"cli_sign_in": signed_in.family_id},
    )
    return JSONResponse(issued.credentials.process_json(), headers=NO_STORE)


@router.post("/console", summary="An AWS console sign-in URL for a role")
def console(services: ServicesDep, signed_in: CliSignInDep, ctx: ContextDep, body: RawBody) -> JSONResponse:
    role, duration = _role_request(body, services, signed_in, ctx, "console")
    url = services.issuance.console_url(signed_in.identity, role=role, ctx=ctx, duration_seconds=duration)
    return JSONResponse({"url": url}, headers=NO_STORE)
