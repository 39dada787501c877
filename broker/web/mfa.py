"""Factor management (``/mfa``), step-up with a broker factor (``/mfa/verify``), WebAuthn JSON endpoints
(``/api/mfa/webauthn/...``, driven by ``static/mfa.js``) and operator reset approval (``/mfa/reset/...``).

Routes parse, call ``broker.mfa`` (the use cases), render. Every form carries the session's CSRF token; the
JSON endpoints take it in the ``X-CSRF-Token`` header.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Header, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from broker.errors import InvalidRequest
from broker.identity import MfaLevel
from broker.mfa.service import Holder
from broker.mfa.webauthn import MAX_CREDENTIAL_JSON
from broker.ratelimit import rate_limited
from broker.signin.sessions import CurrentSession
from broker.web.deps import (
    ContextDep,
    CurrentDep,
    MfaDep,
    TemplatesDep,
    check_csrf,
    csrf_token,
    request_settings,
    safe_return_path,
)

router = APIRouter(tags=["mfa"])
# Factor checks are limited per client address here; per principal, the database-backed lockout
# (mfa.lockout) answers first, with its backoff, across every broker process.
NO_STORE = {"Cache-Control": "no-store"}


def _holder(current: CurrentSession) -> Holder:
    return Holder(current.principal_id, current.identity, current.id_hmac)


def _level(value: str | None) -> MfaLevel:
    try:
        return MfaLevel.parse(value or "mfa")
    except KeyError:
        raise InvalidRequest("Unknown MFA level.", reason="mfa.level_unknown") from None


def _page(request: Request, templates: Any, current: CurrentSession, name: str, **context: Any) -> Response:
    response: Response = templates.TemplateResponse(
        request,
        name,
        {
            "identity": current.identity,
            "csrf": csrf_token(request),
            "dev": request_settings(request).dev,
            **context,
        },
        headers=NO_STORE,
    )
    return response


@router.get("/mfa", response_class=HTMLResponse, summary="Your sign-in factors")
def manage(request: Request, mfa: MfaDep, current: CurrentDep, templates: TemplatesDep) -> Response:
    overview = mfa.overview(current.principal_id)
    return _page(request, templates, current, "mfa.html", title="Sign-in factors", overview=overview)


@router.post("/mfa/totp", response_class=HTMLResponse, summary="Start adding an authenticator app")
def totp_begin(
    request: Request,
    mfa: MfaDep,
    current: CurrentDep,
    ctx: ContextDep,
    templates: TemplatesDep,
    csrf: Annotated[str, Form(max_length=128)] = "",
    name: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    check_csrf(request, csrf, event="mfa.enrol")
    enrolment = mfa.begin_totp(_holder(current), ctx, name=name)
    return _page(request, templates, current, "mfa_totp.html", title="Add an authenticator app", enrolment=enrolment)


@router.post(
    "/mfa/totp/confirm",
    dependencies=[rate_limited("mfa", per="ip")],
    response_class=HTMLResponse,
    summary="Confirm an authenticator app",
)
def totp_confirm(
    request: Request,
    mfa: MfaDep,
    current: CurrentDep,
    ctx: ContextDep,
    templates: TemplatesDep,
    factor_id: Annotated[int, Form()],
    code: Annotated[str, Form(max_length=16)],
    csrf: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    check_csrf(request, csrf, event="mfa.enrol")
    verified = mfa.confirm_totp(_holder(current), ctx, factor_id=factor_id, code=code)
    if verified.recovery_codes:
        return _page(
            request,
            templates,
            current,
            "mfa_recovery.html",
            title="Recovery codes",
            codes=verified.recovery_codes,
        )
    return RedirectResponse("/mfa", status_code=303)


@router.post("/mfa/recovery", response_class=HTMLResponse, summary="Replace your recovery codes")
def recovery_regenerate(
    request: Request,
    mfa: MfaDep,
    current: CurrentDep,
    ctx: ContextDep,
    templates: TemplatesDep,
    csrf: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    check_csrf(request, csrf, event="mfa.enrol")
    codes = mfa.regenerate_recovery_codes(_holder(current), ctx)
    return _page(request, templates, current, "mfa_recovery.html", title="Recovery codes", codes=codes)


@router.post("/mfa/factors/{factor_id}/remove", summary="Remove a factor")
def remove(
    request: Request,
    factor_id: int,
    mfa: MfaDep,
    current: CurrentDep,
    ctx: ContextDep,
    csrf: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    check_csrf(request, csrf, event="mfa.remove")
    mfa.remove(_holder(current), ctx, factor_id=factor_id)
    return RedirectResponse("/mfa", status_code=303)


@router.get("/mfa/verify", response_class=HTMLResponse, summary="Confirm with a factor (step-up)")
def verify_page(
    request: Request,
    mfa: MfaDep,
    current: CurrentDep,
    templates: TemplatesDep,
    role: str | None = None,
    level: str | None = None,
) -> Response:
    config = request_settings(request).role(role) if role else None
    wanted = config.mfa if config else _level(level)
    overview = mfa.overview(current.principal_id)
    return _page(
        request,
        templates,
        current,
        "mfa_verify.html",
        title="Confirm it is you",
        role=config,
        level=wanted,
        overview=overview,
        has_totp=any(f.kind == "totp" for f in overview.factors),
        has_key=any(f.kind == "webauthn" for f in overview.factors),
    )


@router.post(
    "/mfa/verify/totp",
    dependencies=[rate_limited("mfa", per="ip")],
    summary="Step up with an authenticator code",
)
def verify_totp(
    request: Request,
    mfa: MfaDep,
    current: CurrentDep,
    ctx: ContextDep,
    code: Annotated[str, Form(max_length=16)],
    csrf: Annotated[str, Form(max_length=128)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/",
) -> Response:
    check_csrf(request, csrf, event="mfa.verify")
    mfa.verify_totp(_holder(current), ctx, code=code)
    return RedirectResponse(safe_return_path(next), status_code=303)


@router.post(
    "/mfa/verify/recovery", dependencies=[rate_limited("mfa", per="ip")], summary="Step up with a recovery code"
)
def verify_recovery(
    request: Request,
    mfa: MfaDep,
    current: CurrentDep,
    ctx: ContextDep,
    code: Annotated[str, Form(max_length=64)],
    csrf: Annotated[str, Form(max_length=128)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/",
) -> Response:
    check_csrf(request, csrf, event="mfa.verify")
    mfa.verify_recovery(_holder(current), ctx, code=code)
    return RedirectResponse(safe_return_path(next), status_code=303)


# ---------------------------------------------------------------- WebAuthn (JSON, for static/mfa.js)


async def _raw_body(request: Request) -> bytes:
    """The request body, read on the event loop; the routes that use it run in the thread pool."""
    return await request.body()


RawBody = Annotated[bytes, Depends(_raw_body)]


def _json_body(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_CREDENTIAL_JSON:
        raise InvalidRequest("The request is too large.", reason="webauthn.response_too_large")
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise InvalidRequest("The request is not JSON.", reason="request_invalid") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request must be a JSON object.", reason="request_invalid")
    return data


CsrfHeader = Annotated[str, Header(alias="X-CSRF-Token", max_length=128)]


# Plain ``def`` routes: FastAPI runs them in its thread pool, so their database work never blocks the event loop.
@router.post("/api/mfa/webauthn/register/options", summary="WebAuthn registration options")
def register_options(
    request: Request, mfa: MfaDep, current: CurrentDep, ctx: ContextDep, body: RawBody, csrf: CsrfHeader = ""
) -> Response:
    check_csrf(request, csrf, event="mfa.enrol")
    data = _json_body(body)
    options = mfa.begin_registration(_holder(current), ctx, name=str(data.get("name") or ""))
    return JSONResponse(options, headers=NO_STORE)


@router.post(
    "/api/mfa/webauthn/register",
    dependencies=[rate_limited("mfa", per="ip")],
    summary="WebAuthn registration result",
)
def register(
    request: Request, mfa: MfaDep, current: CurrentDep, ctx: ContextDep, body: RawBody, csrf: CsrfHeader = ""
) -> Response:
    check_csrf(request, csrf, event="mfa.enrol")
    view = mfa.finish_registration(_holder(current), ctx, payload=body.decode("utf-8", "replace"))
    return JSONResponse({"id": view.id, "name": view.name, "level": view.level.label}, headers=NO_STORE)


@router.post("/api/mfa/webauthn/authenticate/options", summary="WebAuthn authentication options")
def authenticate_options(
    request: Request, mfa: MfaDep, current: CurrentDep, ctx: ContextDep, body: RawBody, csrf: CsrfHeader = ""
) -> Response:
    check_csrf(request, csrf, event="mfa.verify")
    data = _json_body(body)
    options = mfa.begin_authentication(_holder(current), ctx, level=_level(str(data.get("level") or "mfa")))
    return JSONResponse(options, headers=NO_STORE)


@router.post(
    "/api/mfa/webauthn/authenticate",
    dependencies=[rate_limited("mfa", per="ip")],
    summary="WebAuthn authentication result (step-up)",
)
def authenticate(
    request: Request, mfa: MfaDep, current: CurrentDep, ctx: ContextDep, body: RawBody, csrf: CsrfHeader = ""
) -> Response:
    check_csrf(request, csrf, event="mfa.verify")
    verified = mfa.finish_authentication(_holder(current), ctx, payload=body.decode("utf-8", "replace"))
    return JSONResponse({"mfa": verified.identity.mfa.level.label}, headers=NO_STORE)


# ---------------------------------------------------------------- operator reset approval


@router.get("/mfa/reset/{token}", response_class=HTMLResponse, summary="Review an operator reset request")
def reset_page(request: Request, token: str, mfa: MfaDep, current: CurrentDep, templates: TemplatesDep) -> Response:
    pending = mfa.pending_reset(token)
    return _page(
        request,
        templates,
        current,
        "mfa_reset.html",
        title="Approve a factor reset",
        pending=pending,
        token=token,
    )


@router.post("/mfa/reset/{token}", response_class=HTMLResponse, summary="Approve an operator reset")
def reset_approve(
    request: Request,
    token: str,
    mfa: MfaDep,
    current: CurrentDep,
    ctx: ContextDep,
    templates: TemplatesDep,
    csrf: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    check_csrf(request, csrf, event="mfa.reset")
    target = mfa.approve_reset(_holder(current), ctx, token=token)
    return _page(request, templates, current, "mfa_reset.html", title="Factors reset", done=target, pending=None)
