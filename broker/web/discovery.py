"""Home realm discovery edges: ``/login`` asks for the e-mail address first (when ``discovery.enabled``), then
sends the browser straight to the identity store owning its domain, the address passed on as a hint.

The answer depends on the domain alone (``broker.discovery``), so these pages never reveal whether an address
exists. A refusal (no address, or a domain no store owns) shows the form again with the message announced,
and is audited with the domain only: the typed address is unverified and not recorded.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from broker.audit import Context
from broker.discovery import Realm, domain_of
from broker.errors import BrokerError
from broker.federation import Broker
from broker.ratelimit import rate_limited
from broker.web.deps import BrokerDep, ContextDep, TemplatesDep, check_csrf, safe_return_path
from broker.web.errors import wants_html
from broker.web.portal import browser_id, set_browser_cookie, start_path

router = APIRouter(tags=["sign-in discovery"])


def start_url(broker: Broker, realm: Realm, *, next_path: str, address: str) -> str:
    """The store's own start address with ``next`` and ``login_hint`` (OIDC ``login_hint``, SAML Subject
    hint, or the directory form's username)."""
    connector = broker.connectors[realm.store]
    return f"{start_path(connector)}?{urlencode({'next': next_path, 'login_hint': address.strip()})}"


def find_realm(broker: Broker, address: str, ctx: Context) -> Realm:
    """The realm for an address, or an audited refusal naming the domain (never the address)."""
    try:
        return broker.discovery.realm(address)
    except BrokerError as exc:
        try:
            domain: str | None = domain_of(address)
        except BrokerError:
            domain = None
        raise broker.audit.deny(broker.db, exc, event="login.discovery", ctx=ctx, detail={"domain": domain}) from None


def page(
    request: Request,
    broker: Broker,
    templates: Jinja2Templates,
    *,
    next_path: str,
    email: str = "",
    error: BrokerError | None = None,
) -> Response:
    """The "what is your e-mail address?" form (again, with the error, after a refusal)."""
    browser = browser_id(request)
    response = templates.TemplateResponse(
        request,
        "login_discovery.html",
        {
            "title": "Sign in",
            "next": next_path,
            "csrf": broker.csrf_token(browser),
            "email": email,
            "error": error,
        },
        status_code=error.status if error is not None else 200,
        headers={"Cache-Control": "no-store"},
    )
    set_browser_cookie(response, request, browser)
    return response


def login_page(
    request: Request,
    broker: Broker,
    templates: Jinja2Templates,
    *,
    next_path: str,
    login_hint: str | None,
    ctx: Context,
) -> Response:
    """``GET /login`` with discovery on: the form, or straight on when the address came along (``login_hint``
    from ``broker login --email``)."""
    if not login_hint:
        return page(request, broker, templates, next_path=next_path)
    try:
        realm = find_realm(broker, login_hint, ctx)
    except BrokerError as exc:
        return page(request, broker, templates, next_path=next_path, email=login_hint, error=exc)
    return RedirectResponse(start_url(broker, realm, next_path=next_path, address=login_hint), status_code=303)


@router.post(
    "/login/discover",
    summary="Home realm discovery: go to the sign-in for this e-mail address's domain",
    dependencies=[rate_limited("login", per="ip")],
)
def discover(
    request: Request,
    broker: BrokerDep,
    ctx: ContextDep,
    templates: TemplatesDep,
    email: Annotated[str, Form(max_length=320)] = "",
    csrf: Annotated[str, Form(max_length=128)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/",
) -> Response:
    check_csrf(request, csrf, event="login.discovery", pre_login=True)
    next_path = safe_return_path(next)
    try:
        realm = find_realm(broker, email, ctx)
    except BrokerError as exc:
        if not wants_html(request):
            raise
        request.state.outcome = exc.reason
        return page(request, broker, templates, next_path=next_path, email=email, error=exc)
    response = RedirectResponse(start_url(broker, realm, next_path=next_path, address=email), status_code=303)
    response.headers["Cache-Control"] = "no-store"
    return response
