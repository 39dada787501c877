"""The portal a person uses: sign-in choices, the roles they may use, console and CLI credentials."""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from broker.context import Context
from broker.federation import RoleView
from broker.identity import Channel, Identity
from broker.ratelimit import rate_limited
from broker.signin.use_case import SignIn
from broker.web import discovery
from broker.web.cookies import (
    browser_id,
    clear_session_cookie,
    session_cookie,
    set_browser_cookie,
    set_session_cookie,
)
from broker.web.deps import (
    BrokerDep,
    ContextDep,
    CurrentDep,
    SignInDep,
    TemplatesDep,
    check_csrf,
    safe_return_path,
)
from broker.web.requests import portal_context

router = APIRouter(tags=["portal"])
DURATION_CHOICES = (900, 1800, 3600, 7200, 14400, 28800, 43200)


@router.get("/login", response_class=HTMLResponse, summary="Choose how to sign in")
def login_page(
    request: Request,
    signin: SignInDep,
    templates: TemplatesDep,
    ctx: ContextDep,
    next: str | None = None,
    choose: bool = False,
    login_hint: Annotated[str | None, Query(max_length=320)] = None,
) -> Response:
    if signin.discovery.enabled and not choose:
        # Home realm discovery: the e-mail address first (``choose=1`` shows the list instead).
        return discovery.login_page(
            request, signin, templates, next_path=safe_return_path(next), login_hint=login_hint, ctx=ctx
        )
    browser = browser_id(request)
    stores = signin.connectors.ordered
    if len(stores) == 1 and stores[0].kind != "local":
        response: Response = RedirectResponse(
            f"{signin.connectors.start_path(stores[0])}?next={quote(safe_return_path(next))}", 303
        )
    else:
        response = templates.TemplateResponse(
            request,
            "login.html",
            {
                "title": "Sign in",
                "stores": stores,
                "next": safe_return_path(next),
                "csrf": signin.sessions.csrf_token(browser),
            },
        )
    set_browser_cookie(response, request, browser)
    return response


@router.post(
    "/login/local/{store}",
    summary="Break-glass sign-in with password and TOTP code",
    dependencies=[rate_limited("login", per="ip")],
)
def login_local(
    request: Request,
    store: str,
    signin: SignInDep,
    ctx: ContextDep,
    username: Annotated[str, Form(max_length=256)],
    password: Annotated[str, Form(max_length=1024)],
    totp: Annotated[str, Form(max_length=16)],
    csrf: Annotated[str, Form(max_length=128)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/",
) -> Response:
    check_csrf(request, csrf, event="login", pre_login=True, principal=username[:256], store=store)
    signed_in = signin.local(store, username, password, totp, ctx, previous_session=session_cookie(request))
    response = RedirectResponse(safe_return_path(next), status_code=303)
    set_session_cookie(response, request, signed_in.session_id)
    return response


@router.get("/", response_class=HTMLResponse, summary="The roles you may use")
def portal(
    request: Request, broker: BrokerDep, signin: SignInDep, current: CurrentDep, templates: TemplatesDep
) -> Response:
    # One section per AWS account (by id), titled with the account's name where any of its roles gives one.
    by_account: dict[str, list[RoleView]] = defaultdict(list)
    for view in broker.roles_for(current.identity):
        by_account[view.role.account].append(view)
    accounts: dict[str, list[RoleView]] = {}
    for account, views in sorted(by_account.items()):
        name = next((v.role.account_name for v in views if v.role.account_name), None)
        accounts[f"{name} ({account})" if name else account] = views
    return templates.TemplateResponse(
        request,
        "portal.html",
        {
            "title": "Your AWS access",
            "identity": current.identity,
            # A SAML IdP can be asked again for a stronger sign-in where a role needs one.
            "saml_restart": getattr(signin.connectors.saml.get(current.identity.store), "start_path", None),
            "accounts": accounts,
            "durations": DURATION_CHOICES,
            "csrf": broker.csrf_token(session_cookie(request) or ""),
            "console_enabled": bool(broker.settings.aws.federation_endpoint),
            "dev": broker.settings.dev,
            # The strongest factor the broker holds for this person: offered as a step-up where a role needs it.
            "broker_factor": broker.mfa.overview(current.principal_id).strongest,
            # Just-in-time roles: request form, pending request or open window; the header's /requests link.
            **portal_context(request, current, DURATION_CHOICES),
        },
    )


def _step_up(
    request: Request,
    signin: SignIn,
    identity: Identity,
    role: str,
    action: str,
    duration: int | None,
    ctx: Context,
) -> Response | None:
    """Send the browser to its IdP for a stronger sign-in when the role needs one and the IdP can give it."""
    browser = browser_id(request)
    url = signin.start_step_up(identity, role=role, action=action, duration_seconds=duration, browser=browser, ctx=ctx)
    if url is None:
        return None
    response = RedirectResponse(url, status_code=303)
    set_browser_cookie(response, request, browser)
    return response


@router.post("/console", summary="Open the AWS console in a role")
def open_console(
    request: Request,
    broker: BrokerDep,
    signin: SignInDep,
    current: CurrentDep,
    ctx: ContextDep,
    role: Annotated[str, Form(max_length=64)],
    csrf: Annotated[str, Form(max_length=128)] = "",
    duration: Annotated[int | None, Form()] = None,
) -> Response:
    check_csrf(request, csrf, event="credentials")
    step_up = _step_up(request, signin, current.identity, role, "console", duration, ctx)
    if step_up is not None:
        return step_up
    url = broker.console_url(
        current.identity, role=role, ctx=ctx, duration_seconds=duration, session_hmac=current.id_hmac
    )
    return RedirectResponse(url, status_code=303)


@router.post("/credentials", response_class=HTMLResponse, summary="Show CLI credentials for a role")
def cli_credentials(
    request: Request,
    broker: BrokerDep,
    signin: SignInDep,
    current: CurrentDep,
    ctx: ContextDep,
    templates: TemplatesDep,
    role: Annotated[str, Form(max_length=64)],
    csrf: Annotated[str, Form(max_length=128)] = "",
    duration: Annotated[int | None, Form()] = None,
) -> Response:
    check_csrf(request, csrf, event="credentials")
    step_up = _step_up(request, signin, current.identity, role, "credentials", duration, ctx)
    if step_up is not None:
        return step_up
    issued = broker.issue(
        current.identity,
        role=role,
        channel=Channel.CLI,
        ctx=ctx,
        duration_seconds=duration,
        session_hmac=current.id_hmac,
    )
    response = templates.TemplateResponse(
        request,
        "credentials.html",
        {
            "title": f"Credentials for {role}",
            "role": issued.decision.role,
            "credentials": issued.credentials,
            "identity": current.identity,
            "region": broker.settings.aws.region,
        },
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/logout", summary="Sign out")
def logout(
    request: Request, signin: SignInDep, ctx: ContextDep, csrf: Annotated[str, Form(max_length=128)] = ""
) -> Response:
    cookie = session_cookie(request)
    check_csrf(request, csrf, event="logout")
    # Never /login: with one identity store it goes straight back to the IdP, whose session may still be alive.
    response = RedirectResponse(signin.sign_out(cookie, ctx), status_code=303)
    clear_session_cookie(response, request)
    return response
