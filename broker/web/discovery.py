"""Home realm discovery edges: ``/login`` asks for the e-mail address first (when ``discovery.enabled``), then
sends the browser straight to the identity store owning its domain, the address passed on as a hint.

The answer depends on the domain alone (``broker.discovery``), so these pages never reveal whether an address
exists. A refusal (no address, or a domain no store owns) shows the form again with the message announced;
the use case (:meth:`broker.signin.use_case.SignIn.discover`) audits it with the domain only.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from broker.context import Context
from broker.errors import BrokerError
from broker.ratelimit import rate_limited
from broker.signin.use_case import SignIn
from broker.web.cookies import browser_id, set_browser_cookie
from broker.web.deps import ContextDep, SignInDep, TemplatesDep, check_csrf, safe_return_path
from broker.web.errors import wants_html

router = APIRouter(tags=["sign-in discovery"])


def page(
    request: Request,
    signin: SignIn,
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
            "csrf": signin.sessions.csrf_token(browser),
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
    signin: SignIn,
    templates: Jinja2Templates,
    *,
    next_path: str,
    login_hint: str | None,
    ctx: Context,
) -> Response:
    """``GET /login`` with discovery on: the form, or straight on when the address came along (``login_hint``
    from ``broker login --email``)."""
    if not login_hint:
        return page(request, signin, templates, next_path=next_path)
    try:
        url = signin.discover(login_hint, next_path=next_path, ctx=ctx)
    except BrokerError as exc:
        return page(request, signin, templates, next_path=next_path, email=login_hint, error=exc)
    return RedirectResponse(url, status_code=303)


@router.post(
    "/login/discover",
    summary="Home realm discovery: go to the sign-in for this e-mail address's domain",
    dependencies=[rate_limited("login", per="ip")],
)
def discover(
    request: Request,
    signin: SignInDep,
    ctx: ContextDep,
    templates: TemplatesDep,
    email: Annotated[str, Form(max_length=320)] = "",
    csrf: Annotated[str, Form(max_length=128)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/",
) -> Response:
    check_csrf(request, csrf, event="login.discovery", pre_login=True)
    next_path = safe_return_path(next)
    try:
        url = signin.discover(email, next_path=next_path, ctx=ctx)
    except BrokerError as exc:
        if not wants_html(request):
            raise
        request.state.outcome = exc.reason
        return page(request, signin, templates, next_path=next_path, email=email, error=exc)
    response = RedirectResponse(url, status_code=303)
    response.headers["Cache-Control"] = "no-store"
    return response
