"""FastAPI dependencies as ``Annotated`` aliases, and the small helpers every route shares."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates

from broker.context import Context
from broker.errors import CsrfFailed, LoginRequired
from broker.federation import Broker
from broker.identity import Identity
from broker.mfa.service import MfaService
from broker.operations import Operations
from broker.services import Services
from broker.settings import Settings
from broker.signin.sessions import CurrentSession
from broker.signin.use_case import SignIn
from broker.web.cookies import BROWSER_COOKIE, session_cookie

# Paths a sign-in may return to. Anything else (other hosts, scheme-relative URLs, unknown paths) goes to
# the portal: no open redirect. ``/oauth2/authorize`` comes back with its query (the credential helper's
# request), which that endpoint validates again and shows on a consent page before any redirect.
RETURN_PATHS = ("/", "/device", "/mfa", "/account", "/oauth2/authorize")


# The dependencies that only read the request or the app are ``async def``: FastAPI runs a plain ``def``
# dependency in the thread pool, a hop that costs more than the work here.


def _broker(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


async def get_broker(request: Request) -> Broker:
    return _broker(request)


def request_services(request: Request) -> Services:
    """The process's services (``broker.services``), built once by ``create_app``."""
    services: Services = request.app.state.services
    return services


def request_settings(request: Request) -> Settings:
    return request_services(request).settings


async def get_services(request: Request) -> Services:
    return request_services(request)


async def get_settings(request: Request) -> Settings:
    return request_settings(request)


async def get_mfa(request: Request) -> MfaService:
    return request_services(request).mfa


async def get_operations(request: Request) -> Operations:
    return request_services(request).operations


def csrf_token(request: Request) -> str:
    """The CSRF token of this browser's session, for the forms a page renders."""
    return _broker(request).csrf_token(session_cookie(request) or "")


async def get_signin(request: Request) -> SignIn:
    signin: SignIn = request.app.state.signin
    return signin


async def get_templates(request: Request) -> Jinja2Templates:
    templates: Jinja2Templates = request.app.state.templates
    return templates


def request_context(request: Request) -> Context:
    """Who is asking and from where, for the audit trail."""
    request_id = getattr(request.state, "request_id", None) or str(uuid.uuid4())
    client_ip = request.client.host if request.client else None
    user_agent = request.headers.get("user-agent", "")[:512] or None
    return Context(client_ip=client_ip, user_agent=user_agent, request_id=request_id)


async def get_context(request: Request) -> Context:
    return request_context(request)


def get_current(request: Request) -> CurrentSession:
    broker = _broker(request)
    current = broker.current_session(session_cookie(request))
    request.state.principal = current.identity.principal
    request.state.identity = current.identity
    return current


BrokerDep = Annotated[Broker, Depends(get_broker)]
SignInDep = Annotated[SignIn, Depends(get_signin)]
ContextDep = Annotated[Context, Depends(get_context)]
TemplatesDep = Annotated[Jinja2Templates, Depends(get_templates)]
CurrentDep = Annotated[CurrentSession, Depends(get_current)]
ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MfaDep = Annotated[MfaService, Depends(get_mfa)]
OperationsDep = Annotated[Operations, Depends(get_operations)]


def safe_return_path(value: str | None) -> str:
    """Only the broker's own listed paths; never another origin (``//evil``, ``/\\evil``, ``https:``)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    path = value.split("?", 1)[0].split("#", 1)[0]
    return value if path in RETURN_PATHS and all(c.isprintable() and c != " " for c in value) else "/"


def check_csrf(
    request: Request,
    token: str | None,
    *,
    event: str,
    pre_login: bool = False,
    principal: str | None = None,
    store: str | None = None,
) -> None:
    """The one CSRF check of every form (double-submit): the token must be the HMAC of this browser's session
    cookie, or of its pre-login cookie for the sign-in form (``pre_login``).

    A refusal is audited as ``event`` / ``denied`` / ``csrf_failed`` when it can be attributed: to the live
    session the request carries, or to the account a sign-in form names. A form with neither (no session at
    all) is refused without an audit event: anyone can send one, and nobody would be named in it.
    """
    broker = _broker(request)
    secret = request.cookies.get(BROWSER_COOKIE) if pre_login else session_cookie(request)
    if secret and token and broker.csrf_matches(secret, token):
        return
    error = CsrfFailed()
    identity: Identity | None = getattr(request.state, "identity", None)
    if identity is None and not pre_login:
        try:
            identity = broker.current_session(secret).identity
        except LoginRequired:
            identity = None
    if identity is None and principal is None:
        raise error
    raise broker.audit.deny(
        broker.db,
        error,
        event=event,
        identity=identity,
        principal=principal,
        store=store,
        ctx=request_context(request),
        detail={"path": request.url.path},
    )
