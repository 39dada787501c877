"""The portal a person uses: sign-in choices, the roles they may use, console and CLI credentials."""

from __future__ import annotations

import secrets
from collections import defaultdict
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from broker.audit import Context
from broker.federation import Broker, RoleView
from broker.identity import Channel, Identity
from broker.ratelimit import limiter_of, rate_limited
from broker.saml_signin import SamlSignIn
from broker.web.deps import (
    BROWSER_COOKIE,
    BrokerDep,
    ContextDep,
    CurrentDep,
    TemplatesDep,
    check_csrf,
    safe_return_path,
    session_cookie,
)
from broker.web.requests import portal_context

router = APIRouter(tags=["portal"])
DURATION_CHOICES = (900, 1800, 3600, 7200, 14400, 28800, 43200)


def start_path(connector: object) -> str:
    """Where a sign-in with this connector starts: its own ``start_path`` (SAML), else ``/login/{name}``."""
    return str(getattr(connector, "start_path", None) or f"/login/{getattr(connector, 'name', '')}")


def browser_id(request: Request) -> str:
    """A random pre-login cookie: binds sign-ins in flight to this browser and anchors login-form CSRF."""
    return request.cookies.get(BROWSER_COOKIE) or secrets.token_urlsafe(24)


def set_browser_cookie(response: Response, request: Request, value: str) -> None:
    broker = request.app.state.broker
    if request.cookies.get(BROWSER_COOKIE) != value:
        response.set_cookie(
            BROWSER_COOKIE, value, httponly=True, secure=broker.settings.session.cookie_secure, samesite="lax", path="/"
        )


def set_session_cookie(response: Response, request: Request, session_id: str) -> None:
    settings = request.app.state.broker.settings
    response.set_cookie(
        settings.session.cookie_name,
        session_id,
        httponly=True,
        secure=settings.session.cookie_secure,
        samesite="lax",
        path="/",
        max_age=settings.session.absolute_timeout_hours * 3600,
    )


@router.get("/login", response_class=HTMLResponse, summary="Choose how to sign in")
def login_page(
    request: Request,
    broker: BrokerDep,
    templates: TemplatesDep,
    ctx: ContextDep,
    next: str | None = None,
    choose: bool = False,
    login_hint: Annotated[str | None, Query(max_length=320)] = None,
) -> Response:
    if broker.discovery.enabled and not choose:
        # Home realm discovery: the e-mail address first (``choose=1`` shows the list instead).
        from broker.web import discovery

        return discovery.login_page(
            request, broker, templates, next_path=safe_return_path(next), login_hint=login_hint, ctx=ctx
        )
    browser = browser_id(request)
    stores = broker.sign_in_options()
    if len(stores) == 1 and stores[0].kind != "local":
        response: Response = RedirectResponse(f"{start_path(stores[0])}?next={quote(safe_return_path(next))}", 303)
    else:
        response = templates.TemplateResponse(
            request,
            "login.html",
            {
                "title": "Sign in",
                "stores": stores,
                "next": safe_return_path(next),
                "csrf": broker.csrf_token(browser),
                "dev": broker.settings.dev,
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
    broker: BrokerDep,
    ctx: ContextDep,
    username: Annotated[str, Form(max_length=256)],
    password: Annotated[str, Form(max_length=1024)],
    totp: Annotated[str, Form(max_length=16)],
    csrf: Annotated[str, Form(max_length=128)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/",
) -> Response:
    check_csrf(request, csrf, event="login", pre_login=True, principal=username[:256], store=store)
    # Per account as well as per address: password guessing spread over many addresses still stops.
    limiter = limiter_of(request)
    if limiter is not None:
        limiter.hit("login", per="principal", key=f"{store}:{username}", ctx=ctx, principal=username[:256], store=store)
    signed_in = broker.login_local(store, username, password, totp, ctx, previous_session=session_cookie(request))
    response = RedirectResponse(safe_return_path(next), status_code=303)
    set_session_cookie(response, request, signed_in.session_id)
    return response


@router.get("/", response_class=HTMLResponse, summary="The roles you may use")
def portal(request: Request, broker: BrokerDep, current: CurrentDep, templates: TemplatesDep) -> Response:
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
    broker: Broker,
    identity: Identity,
    role: str,
    action: str,
    duration: int | None,
    ctx: Context,
) -> Response | None:
    """Send the browser to its IdP for a stronger sign-in when the role needs one and the IdP can give it."""
    browser = browser_id(request)
    url = broker.start_step_up(identity, role=role, action=action, duration_seconds=duration, browser=browser, ctx=ctx)
    if url is None:
        return None
    response = RedirectResponse(url, status_code=303)
    set_browser_cookie(response, request, browser)
    return response


@router.post("/console", summary="Open the AWS console in a role")
def open_console(
    request: Request,
    broker: BrokerDep,
    current: CurrentDep,
    ctx: ContextDep,
    role: Annotated[str, Form(max_length=64)],
    csrf: Annotated[str, Form(max_length=128)] = "",
    duration: Annotated[int | None, Form()] = None,
) -> Response:
    check_csrf(request, csrf, event="credentials")
    step_up = _step_up(request, broker, current.identity, role, "console", duration, ctx)
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
    current: CurrentDep,
    ctx: ContextDep,
    templates: TemplatesDep,
    role: Annotated[str, Form(max_length=64)],
    csrf: Annotated[str, Form(max_length=128)] = "",
    duration: Annotated[int | None, Form()] = None,
) -> Response:
    check_csrf(request, csrf, event="credentials")
    step_up = _step_up(request, broker, current.identity, role, "credentials", duration, ctx)
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
    request: Request, broker: BrokerDep, ctx: ContextDep, csrf: Annotated[str, Form(max_length=128)] = ""
) -> Response:
    cookie = session_cookie(request)
    check_csrf(request, csrf, event="logout")
    # A SAML sign-in goes to its IdP's single logout (or a page saying the IdP session lives on).
    saml_exit = SamlSignIn(broker).sign_out(cookie, ctx)
    idp_logout = saml_exit if saml_exit is not None else broker.logout(cookie, ctx)
    # Never /login: with one identity store it goes straight back to the IdP, whose session may still be alive.
    response = RedirectResponse(idp_logout or "/signed-out", status_code=303)
    response.delete_cookie(broker.settings.session.cookie_name, path="/")
    return response
