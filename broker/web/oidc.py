"""OpenID Connect sign-in edges: start at ``/login/{store}``, finish at ``/oidc/{store}/callback``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from broker.errors import BrokerError, InvalidRequest
from broker.ratelimit import rate_limited
from broker.web.deps import BROWSER_COOKIE, BrokerDep, ContextDep, TemplatesDep, safe_return_path, session_cookie
from broker.web.errors import render_error
from broker.web.portal import browser_id, set_browser_cookie, set_session_cookie

router = APIRouter(tags=["oidc"])
# The callback carries code, state, iss (RFC 9207) or error, error_description, error_uri; a few hundred
# bytes each in practice. Anything much larger is refused before it reaches the database or the IdP.
MAX_PARAM_CHARS = 4096


@router.get(
    "/login/{store}",
    summary="Sign in with an OpenID Connect identity provider",
    dependencies=[rate_limited("login", per="ip")],
)
def start(
    request: Request,
    store: str,
    broker: BrokerDep,
    next: str | None = None,
    login_hint: Annotated[str | None, Query(max_length=254)] = None,
) -> Response:
    browser = browser_id(request)
    hint = login_hint if login_hint and login_hint.isprintable() else None
    url = broker.begin_oidc_login(store, browser=browser, return_to=safe_return_path(next), login_hint=hint)
    response = RedirectResponse(url, status_code=303)
    set_browser_cookie(response, request, browser)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get(
    "/oidc/{store}/callback",
    summary="The identity provider's authorization response",
    dependencies=[rate_limited("callback", per="ip")],
)
def callback(request: Request, store: str, broker: BrokerDep, ctx: ContextDep) -> Response:
    items = request.query_params.multi_items()
    names = [name for name, _ in items]
    # RFC 6749 section 3.1: request and response parameters MUST NOT be included more than once.
    if len(names) != len(set(names)) or any(len(value) > MAX_PARAM_CHARS for _, value in items):
        raise broker.audit.deny(
            broker.db,
            InvalidRequest("The sign-in answer is malformed. Start the sign-in again.", reason="oidc.params_invalid"),
            event="login",
            store=store,
            ctx=ctx,
        )
    done = broker.finish_oidc_login(
        store,
        dict(items),
        browser=request.cookies.get(BROWSER_COOKIE),
        previous_session=session_cookie(request),
        ctx=ctx,
    )
    request.state.principal = done.signed_in.identity.principal
    try:
        response: Response = RedirectResponse(broker.after_oidc_sign_in(done, ctx), status_code=303)
    except BrokerError as exc:
        # Signed in, but the step-up's purpose failed: show why, and keep the new session.
        response = render_error(request, exc)
    set_session_cookie(response, request, done.signed_in.session_id)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/signed-out", response_class=HTMLResponse, summary="Shown after signing out; never redirects")
def signed_out(
    request: Request,
    broker: BrokerDep,
    templates: TemplatesDep,
    store: str | None = None,
    idp_session: str | None = None,
) -> Response:
    # Only selects a note: which identity provider, and whether its own sign-in was ended too.
    connector = broker.connectors.get(store or "")
    return templates.TemplateResponse(
        request,
        "signed_out.html",
        {
            "title": "Signed out",
            "idp": connector.display_name if connector is not None else None,
            "idp_session": idp_session if idp_session in {"ended", "kept"} else None,
        },
    )
