"""OpenID Connect sign-in edges: start at ``/login/{store}``, finish at ``/oidc/{store}/callback``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from broker.errors import BrokerError
from broker.ratelimit import rate_limited
from broker.web.cookies import BROWSER_COOKIE, browser_id, session_cookie, set_browser_cookie, set_session_cookie
from broker.web.deps import ContextDep, SignInDep, TemplatesDep, safe_return_path
from broker.web.errors import render_error

router = APIRouter(tags=["oidc"])


@router.get(
    "/login/{store}",
    summary="Sign in with an OpenID Connect identity provider",
    dependencies=[rate_limited("login", per="ip")],
)
def start(
    request: Request,
    store: str,
    signin: SignInDep,
    next: str | None = None,
    login_hint: Annotated[str | None, Query(max_length=254)] = None,
) -> Response:
    browser = browser_id(request)
    hint = login_hint if login_hint and login_hint.isprintable() else None
    url = signin.begin_oidc(store, browser=browser, return_to=safe_return_path(next), login_hint=hint)
    response = RedirectResponse(url, status_code=303)
    set_browser_cookie(response, request, browser)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get(
    "/oidc/{store}/callback",
    summary="The identity provider's authorization response",
    dependencies=[rate_limited("callback", per="ip")],
)
def callback(request: Request, store: str, signin: SignInDep, ctx: ContextDep) -> Response:
    done = signin.finish_oidc(
        store,
        request.query_params.multi_items(),
        browser=request.cookies.get(BROWSER_COOKIE),
        previous_session=session_cookie(request),
        ctx=ctx,
    )
    request.state.principal = done.signed_in.identity.principal
    try:
        response: Response = RedirectResponse(signin.after_oidc(done, ctx), status_code=303)
    except BrokerError as exc:
        # Signed in, but the step-up's purpose failed: show why, and keep the new session.
        response = render_error(request, exc)
    set_session_cookie(response, request, done.signed_in.session_id)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/signed-out", response_class=HTMLResponse, summary="Shown after signing out; never redirects")
def signed_out(
    request: Request,
    signin: SignInDep,
    templates: TemplatesDep,
    store: str | None = None,
    idp_session: str | None = None,
) -> Response:
    # Only selects a note: which identity provider, and whether its own sign-in was ended too.
    connector = signin.connectors.get(store or "")
    return templates.TemplateResponse(
        request,
        "signed_out.html",
        {
            "title": "Signed out",
            "idp": connector.display_name if connector is not None else None,
            "idp_session": idp_session if idp_session in {"ended", "kept"} else None,
        },
    )
