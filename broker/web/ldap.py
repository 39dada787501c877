"""Directory (LDAP) sign-in edges: the form at ``/login/ldap/{store}`` and its POST.

A refusal shows the form again with the reason announced (``role="alert"``) and the username kept, with the
refusal's status and ``Retry-After``; API clients get the usual JSON error. Guessing is limited per account
(the typed name, case-folded, since directories match names case-insensitively) and per address, with the
same ``login`` limits as break-glass accounts.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from broker.connectors.ldap import LdapConnector, audit_name
from broker.errors import BrokerError
from broker.ratelimit import rate_limited
from broker.signin.use_case import SignIn
from broker.web.cookies import browser_id, session_cookie, set_browser_cookie, set_session_cookie
from broker.web.deps import ContextDep, SignInDep, TemplatesDep, check_csrf, safe_return_path
from broker.web.errors import wants_html

router = APIRouter(tags=["directory sign-in"])


def _form(
    request: Request,
    templates: TemplatesDep,
    signin: SignIn,
    connector: LdapConnector,
    *,
    next_path: str,
    username: str = "",
    error: BrokerError | None = None,
) -> Response:
    browser = browser_id(request)
    headers = {"Cache-Control": "no-store"}
    if error is not None and error.retry_after:
        headers["Retry-After"] = str(error.retry_after)
    response = templates.TemplateResponse(
        request,
        "login_ldap.html",
        {
            "title": f"Sign in with {connector.display_name}",
            "store": connector,
            "next": next_path,
            "csrf": signin.sessions.csrf_token(browser),
            "username": username,
            "error": error,
            "others": len(signin.connectors.ordered) > 1,
        },
        status_code=error.status if error is not None else 200,
        headers=headers,
    )
    set_browser_cookie(response, request, browser)
    return response


@router.get("/login/ldap/{store}", response_class=HTMLResponse, summary="Directory (LDAP) sign-in form")
def ldap_form(
    request: Request,
    store: str,
    signin: SignInDep,
    templates: TemplatesDep,
    next: Annotated[str | None, Query(max_length=2048)] = None,
    login_hint: Annotated[str | None, Query(max_length=254)] = None,
) -> Response:
    connector = signin.connectors.ldap_store(store)
    # The discovered address fills the username only where the directory accepts addresses as usernames.
    prefill = login_hint if login_hint and login_hint.isprintable() and connector.takes_addresses else ""
    return _form(request, templates, signin, connector, next_path=safe_return_path(next), username=prefill)


@router.post(
    "/login/ldap/{store}",
    summary="Directory (LDAP) sign-in with username and password",
    dependencies=[rate_limited("login", per="ip")],
)
def ldap_login(
    request: Request,
    store: str,
    signin: SignInDep,
    ctx: ContextDep,
    templates: TemplatesDep,
    username: Annotated[str, Form(max_length=256)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    csrf: Annotated[str, Form(max_length=128)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/",
) -> Response:
    connector = signin.connectors.ldap_store(store)
    check_csrf(request, csrf, event="login", pre_login=True, principal=audit_name(username), store=store)
    try:
        signed_in = signin.ldap(store, username, password, ctx, previous_session=session_cookie(request))
    except BrokerError as exc:
        if not wants_html(request):
            raise
        request.state.outcome = exc.reason
        return _form(
            request, templates, signin, connector, next_path=safe_return_path(next), username=username, error=exc
        )
    request.state.principal = signed_in.identity.principal
    response = RedirectResponse(safe_return_path(next), status_code=303)
    set_session_cookie(response, request, signed_in.session_id)
    response.headers["Cache-Control"] = "no-store"
    return response
