"""OAuth routes: the token endpoint, the broker's discovery documents and its JWKS. Thin: parse, call, render."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from broker.errors import InvalidRequest, PayloadTooLarge
from broker.oauth.grants import MAX_PARAMETERS
from broker.oauth.server import JWKS_PATH, TOKEN_PATH, OAuthServer
from broker.ratelimit import rate_limited
from broker.web.deps import ContextDep

router = APIRouter(tags=["oauth"])
# RFC 6749 section 5.1: token responses must not be cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# Discovery and keys change rarely; a short public cache still lets a rotation show up quickly.
PUBLIC_CACHE = {"Cache-Control": "public, max-age=300"}


async def get_oauth(request: Request) -> OAuthServer:
    oauth: OAuthServer = request.app.state.oauth
    return oauth


OAuthDep = Annotated[OAuthServer, Depends(get_oauth)]


async def _form_items(request: Request, limit: int) -> list[tuple[str, str]]:
    """The urlencoded body as (name, value) pairs, refused before parsing if too large (RFC 6749 section 3.2)."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise InvalidRequest("Send the token request as application/x-www-form-urlencoded.", reason="content_type")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise PayloadTooLarge(reason="token_request_too_large")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(reason="token_request_too_large")
    try:
        return parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=MAX_PARAMETERS)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("The form body is malformed.", reason="form_malformed") from None


@router.post(
    TOKEN_PATH,
    summary="OAuth 2.0 token endpoint (RFC 8693 token exchange)",
    dependencies=[rate_limited("token", per="ip")],
)
async def token(request: Request, oauth: OAuthDep, ctx: ContextDep) -> JSONResponse:
    items = await _form_items(request, oauth.settings.oauth.max_request_bytes)
    result: dict[str, Any] = await run_in_threadpool(
        oauth.endpoint.token, items, authorization=request.headers.get("authorization"), ctx=ctx
    )
    return JSONResponse(result, headers=NO_STORE)


@router.get("/.well-known/oauth-authorization-server", summary="RFC 8414 authorization server metadata")
@router.get("/.well-known/openid-configuration", summary="OpenID Provider metadata (issuer and keys)")
def metadata(oauth: OAuthDep) -> JSONResponse:
    return JSONResponse(oauth.metadata(), headers=PUBLIC_CACHE)


@router.get(JWKS_PATH, summary="The broker's public signing keys (RFC 7517)")
def jwks(oauth: OAuthDep) -> JSONResponse:
    return JSONResponse(oauth.tokens.jwks(), headers={**PUBLIC_CACHE, "Content-Type": "application/jwk-set+json"})
