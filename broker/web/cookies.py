"""The browser cookies of sign-in, in one place: the session cookie, the pre-login browser cookie and the SAML
binding cookie (what each holds, and its flags).

The session cookie holds a random id (the database keeps only its HMAC); the browser cookie is a random value
that binds sign-ins in flight to this browser and anchors the sign-in forms' CSRF token; the SAML binding
cookie does the same for a SAML sign-in, whose IdP form POST is a cross-site request on which browsers do not
send ``SameSite=Lax`` cookies, so it is ``SameSite=None; Secure`` (``Lax`` only for plain-HTTP development,
where ``None`` is refused by browsers). See docs/security.md, "Sessions".
"""

from __future__ import annotations

import secrets

from fastapi import Request
from fastapi.responses import Response

from broker.settings import SessionSettings

BROWSER_COOKIE = "broker_browser"
BINDING_COOKIE = "broker_saml"
BINDING_PATH = "/saml/"


def _config(request: Request) -> SessionSettings:
    config: SessionSettings = request.app.state.signin.sessions.settings
    return config


def session_cookie(request: Request) -> str | None:
    return request.cookies.get(_config(request).cookie_name)


def set_session_cookie(response: Response, request: Request, session_id: str) -> None:
    config = _config(request)
    response.set_cookie(
        config.cookie_name,
        session_id,
        httponly=True,
        secure=config.cookie_secure,
        samesite="lax",
        path="/",
        max_age=config.absolute_timeout_hours * 3600,
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(_config(request).cookie_name, path="/")


def browser_id(request: Request) -> str:
    """This browser's pre-login cookie, or a new random value (set it with :func:`set_browser_cookie`)."""
    return request.cookies.get(BROWSER_COOKIE) or secrets.token_urlsafe(24)


def set_browser_cookie(response: Response, request: Request, value: str) -> None:
    if request.cookies.get(BROWSER_COOKIE) != value:
        secure = _config(request).cookie_secure
        response.set_cookie(BROWSER_COOKIE, value, httponly=True, secure=secure, samesite="lax", path="/")


def binding_id(request: Request) -> str:
    """This browser's SAML binding cookie, or a new random value (set it with :func:`set_binding_cookie`)."""
    return request.cookies.get(BINDING_COOKIE) or secrets.token_urlsafe(24)


def set_binding_cookie(response: Response, request: Request, value: str, *, max_age: int) -> None:
    secure = _config(request).cookie_secure
    response.set_cookie(
        BINDING_COOKIE,
        value,
        httponly=True,
        secure=secure,
        samesite="none" if secure else "lax",
        path=BINDING_PATH,
        max_age=max_age,
    )
