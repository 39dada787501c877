"""FastAPI dependencies as ``Annotated`` aliases, and the small helpers every route shares."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates

from broker.audit import Context
from broker.errors import CsrfFailed
from broker.federation import Broker, CurrentSession

BROWSER_COOKIE = "broker_browser"
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


async def get_templates(request: Request) -> Jinja2Templates:
    templates: Jinja2Templates = request.app.state.templates
    return templates


async def get_context(request: Request) -> Context:
    request_id = getattr(request.state, "request_id", None) or str(uuid.uuid4())
    client_ip = request.client.host if request.client else None
    user_agent = request.headers.get("user-agent", "")[:512] or None
    return Context(client_ip=client_ip, user_agent=user_agent, request_id=request_id)


def session_cookie(request: Request) -> str | None:
    broker = _broker(request)
    return request.cookies.get(broker.settings.session.cookie_name)


def get_current(request: Request) -> CurrentSession:
    broker = _broker(request)
    current = broker.current_session(session_cookie(request))
    request.state.principal = current.identity.principal
    return current


BrokerDep = Annotated[Broker, Depends(get_broker)]
ContextDep = Annotated[Context, Depends(get_context)]
TemplatesDep = Annotated[Jinja2Templates, Depends(get_templates)]
CurrentDep = Annotated[CurrentSession, Depends(get_current)]


def safe_return_path(value: str | None) -> str:
    """Only the broker's own listed paths; never another origin (``//evil``, ``/\\evil``, ``https:``)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    path = value.split("?", 1)[0].split("#", 1)[0]
    return value if path in RETURN_PATHS and all(c.isprintable() and c != " " for c in value) else "/"


def check_csrf(broker: Broker, secret: str | None, token: str | None) -> None:
    """Double-submit: the form token must be the HMAC of this browser's session or pre-login cookie."""
    import hmac

    if not secret or not token or not hmac.compare_digest(broker.csrf_token(secret), token):
        raise CsrfFailed()
