"""OAuth edges for the credential helper (a native app): the loopback authorization endpoint (RFC 8252), the
device authorization endpoint and its ``/device`` page (RFC 8628), and token revocation (RFC 7009).

Thin: parse, call ``broker.oauth`` (``authorization_code``, ``device``, ``refresh``), render.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from broker.errors import LoginRequired
from broker.federation import Broker
from broker.oauth.authorization_code import AUTHORIZE_PARAMS, AUTHORIZE_PATH, ErrorRedirect
from broker.oauth.device import VERIFICATION_PATH
from broker.oauth.grants import Params
from broker.oauth.server import DEVICE_AUTHORIZATION_PATH, REVOCATION_PATH
from broker.ratelimit import rate_limited
from broker.signin.sessions import CurrentSession
from broker.web.cookies import session_cookie
from broker.web.deps import (
    BrokerDep,
    ContextDep,
    TemplatesDep,
    check_csrf,
    csrf_token,
    request_settings,
)
from broker.web.oauth import NO_STORE, OAuthDep, _form_items

router = APIRouter(tags=["credential helper sign-in"])


def _current_or_login(request: Request, broker: Broker) -> CurrentSession | Response:
    """The browser's session, or a redirect to sign in that comes back here with the same query."""
    try:
        current = broker.current_session(session_cookie(request))
    except LoginRequired:
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        # `broker login --email` sends the address along: home realm discovery picks the sign-in from it.
        hint = request.query_params.get("login_hint")
        extra = f"&login_hint={quote(hint[:254], safe='')}" if hint else ""
        return RedirectResponse(f"/login?next={quote(back, safe='')}{extra}", status_code=303)
    request.state.principal = current.identity.principal
    return current


# ---------------------------------------------------------------- RFC 8252 loopback with PKCE


@router.get(AUTHORIZE_PATH, response_class=HTMLResponse, summary="Authorization endpoint for the credential helper")
def authorize(
    request: Request, broker: BrokerDep, oauth: OAuthDep, ctx: ContextDep, templates: TemplatesDep
) -> Response:
    items = request.query_params.multi_items()
    try:
        authorization = oauth.authorization.check(items, ctx)
    except ErrorRedirect as redirect:
        return RedirectResponse(redirect.location, status_code=303)
    current = _current_or_login(request, broker)
    if isinstance(current, Response):
        return current
    response = templates.TemplateResponse(
        request,
        "authorize.html",
        {
            "title": "Sign in the broker command line",
            "identity": current.identity,
            "csrf": csrf_token(request),
            "fields": authorization.hidden_fields(),
            "listener": authorization.listener,
            "hours": request_settings(request).oauth.cli.refresh_token_ttl_hours,
            "session_expires_at": current.expires_at,
        },
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post(AUTHORIZE_PATH, summary="The person's answer on the consent page")
async def authorize_answer(request: Request, broker: BrokerDep, oauth: OAuthDep, ctx: ContextDep) -> Response:
    form = await request.form(max_fields=len(AUTHORIZE_PARAMS) + 4)
    csrf = str(form.get("csrf") or "")
    decision = str(form.get("decision") or "")
    items = [(name, str(value)) for name, value in form.multi_items() if name in AUTHORIZE_PARAMS]
    current = await run_in_threadpool(broker.current_session, session_cookie(request))
    request.state.principal, request.state.identity = current.identity.principal, current.identity
    await run_in_threadpool(check_csrf, request, csrf, event="cli_authorize")
    try:
        authorization = await run_in_threadpool(oauth.authorization.check, items, ctx, current.identity)
    except ErrorRedirect as redirect:
        return RedirectResponse(redirect.location, status_code=303)
    if decision == "allow":
        location = await run_in_threadpool(oauth.authorization.approve, authorization, current, ctx)
    else:
        location = await run_in_threadpool(oauth.authorization.decline, authorization, current, ctx)
    return RedirectResponse(location, status_code=303, headers={"Cache-Control": "no-store"})


# ---------------------------------------------------------------- RFC 8628 device authorization


@router.post(
    DEVICE_AUTHORIZATION_PATH,
    summary="Device authorization endpoint (RFC 8628 section 3.1)",
    dependencies=[rate_limited("device", per="ip")],
)
async def device_authorization(request: Request, oauth: OAuthDep, ctx: ContextDep) -> JSONResponse:
    items = await _form_items(request, oauth.settings.oauth.max_request_bytes)
    result = await run_in_threadpool(oauth.device.authorize, Params(items), ctx)
    return JSONResponse(result, headers=NO_STORE)


@router.get(
    VERIFICATION_PATH,
    response_class=HTMLResponse,
    summary="Confirm a sign-in code shown by `broker login --device`",
    dependencies=[rate_limited("device", per="ip")],
)
def device_page(
    request: Request,
    broker: BrokerDep,
    oauth: OAuthDep,
    ctx: ContextDep,
    templates: TemplatesDep,
    user_code: str | None = None,
) -> Response:
    current = _current_or_login(request, broker)
    if isinstance(current, Response):
        return current
    pending = oauth.device.lookup(user_code, current.identity, ctx) if user_code else None
    response = templates.TemplateResponse(
        request,
        "device.html",
        {
            "title": "Sign in the broker command line",
            "identity": current.identity,
            "csrf": csrf_token(request),
            "pending": pending,
            "hours": request_settings(request).oauth.cli.refresh_token_ttl_hours,
            "session_expires_at": current.expires_at,
        },
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post(
    VERIFICATION_PATH,
    response_class=HTMLResponse,
    summary="Approve or deny a device sign-in",
    dependencies=[rate_limited("device", per="ip")],
)
def device_answer(
    request: Request,
    broker: BrokerDep,
    oauth: OAuthDep,
    ctx: ContextDep,
    templates: TemplatesDep,
    user_code: Annotated[str, Form(max_length=32)],
    decision: Annotated[str, Form(max_length=16)],
    csrf: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    current = broker.current_session(session_cookie(request))
    request.state.principal, request.state.identity = current.identity.principal, current.identity
    check_csrf(request, csrf, event="device_confirm")
    approve = decision == "allow"
    oauth.device.decide(user_code, approve=approve, current=current, ctx=ctx)
    return templates.TemplateResponse(
        request,
        "device.html",
        {
            "title": "Command line signed in" if approve else "Sign-in denied",
            "identity": current.identity,
            "csrf": csrf_token(request),
            "done": "allowed" if approve else "denied",
        },
    )


# ---------------------------------------------------------------- RFC 7009 revocation


@router.post(REVOCATION_PATH, summary="Token revocation (RFC 7009): ends the CLI sign-in")
async def revoke(request: Request, oauth: OAuthDep, ctx: ContextDep) -> Response:
    items = await _form_items(request, oauth.settings.oauth.max_request_bytes)
    await run_in_threadpool(oauth.cli.revoke, Params(items), ctx)
    # Section 2.2: 200 whether or not the token was known; the body is ignored by clients.
    return Response(status_code=200, headers=NO_STORE)
