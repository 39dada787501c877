"""SAML 2.0 endpoints: start a sign-in, SP metadata, the Assertion Consumer Service (POST binding), and the
SingleLogoutService (HTTP-Redirect binding) for the IdP's LogoutRequest and its answer to the broker's.

The ACS reads the form body itself, capped, so an oversized message is refused before anything parses it.
The browser that started a sign-in is recognised at the ACS by a dedicated binding cookie
(:mod:`broker.web.cookies`). The use case is :mod:`broker.signin.saml`.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from broker.connectors.saml_logout import MAX_QUERY_CHARS, LogoutRejected
from broker.connectors.saml_response import MAX_FORM_BYTES
from broker.errors import InvalidRequest, PayloadTooLarge
from broker.identity import MfaLevel
from broker.ratelimit import rate_limited
from broker.signin.saml import LOGIN_REQUEST_TTL, SamlSignIn
from broker.signin.use_case import SignIn
from broker.web.cookies import (
    BINDING_COOKIE,
    BINDING_PATH,
    binding_id,
    session_cookie,
    set_binding_cookie,
    set_session_cookie,
)
from broker.web.deps import ContextDep, TemplatesDep, safe_return_path

router = APIRouter(tags=["saml"])


async def get_saml(request: Request) -> SamlSignIn:
    signin: SignIn = request.app.state.signin
    return signin.saml


SamlDep = Annotated[SamlSignIn, Depends(get_saml)]


@router.get(
    "/saml/{store}/login",
    summary="Start a SAML sign-in (HTTP-Redirect AuthnRequest)",
    dependencies=[rate_limited("login", per="ip")],
)
def saml_login(
    request: Request,
    store: str,
    saml: SamlDep,
    next: Annotated[str | None, Query(max_length=2048)] = None,
    level: Annotated[str, Query(pattern="^(none|mfa|phishing_resistant)$")] = "none",
    login_hint: Annotated[str | None, Query(max_length=254)] = None,
) -> Response:
    binding = binding_id(request)
    hint = login_hint if login_hint and login_hint.isprintable() else None
    url = saml.start(
        store, binding=binding, next_path=safe_return_path(next), level=MfaLevel.parse(level), login_hint=hint
    )
    response = RedirectResponse(url, status_code=303)
    set_binding_cookie(response, request, binding, max_age=int(LOGIN_REQUEST_TTL.total_seconds()))
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/saml/{store}/metadata", summary="SAML service-provider metadata for the IdP administrator")
def saml_metadata(store: str, saml: SamlDep) -> Response:
    return Response(saml.connector(store).metadata_xml(), media_type="application/samlmetadata+xml")


@router.post(
    "/saml/{store}/acs",
    summary="Assertion Consumer Service (HTTP-POST binding)",
    dependencies=[rate_limited("acs", per="ip")],
)
async def saml_acs(request: Request, store: str, saml: SamlDep, ctx: ContextDep, templates: TemplatesDep) -> Response:
    saml.connector(store)  # 404 for an unknown store, before reading anything
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_FORM_BYTES:
            too_large = PayloadTooLarge("The sign-in response is too large.", reason="saml.too_large")
            raise await run_in_threadpool(saml.refuse, store, too_large, ctx)
    try:
        form = parse_qs(body.decode("ascii"), max_num_fields=8, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        form = {}
    responses = form.get("SAMLResponse", [])
    if len(responses) != 1 or len(form.get("RelayState", [])) > 1:
        malformed = InvalidRequest("The sign-in response is missing or malformed.", reason="saml.malformed")
        raise await run_in_threadpool(saml.refuse, store, malformed, ctx)
    relay_state = form["RelayState"][0] if "RelayState" in form else None
    finished = await run_in_threadpool(
        lambda: saml.finish(
            store,
            responses[0],
            binding=request.cookies.get(BINDING_COOKIE),
            relay_state=relay_state,
            previous_session=session_cookie(request),
            ctx=ctx,
        )
    )
    response: Response = RedirectResponse(safe_return_path(finished.next_path), status_code=303)
    if finished.attributes_absent:
        # Signed in, but the IdP did not send what this store maps: tell the person before the empty portal.
        response = templates.TemplateResponse(
            request,
            "saml_attributes.html",
            {
                "title": "Signed in, with information missing",
                "store": saml.connector(store).display_name,
                "absent": finished.attributes_absent,
                "present": finished.attributes_present,
                "next": safe_return_path(finished.next_path),
            },
        )
    set_session_cookie(response, request, finished.signed_in.session_id)
    response.delete_cookie(BINDING_COOKIE, path=BINDING_PATH)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get(
    "/saml/{store}/slo",
    summary="SingleLogoutService (HTTP-Redirect): the IdP's LogoutRequest, or its LogoutResponse to the broker's",
    dependencies=[rate_limited("acs", per="ip")],
)
def saml_slo(request: Request, store: str, saml: SamlDep, ctx: ContextDep) -> Response:
    saml.connector(store)  # 404 for an unknown store, before reading anything
    raw = request.url.query
    items = request.query_params.multi_items()
    names = [name for name, _ in items]
    if len(raw) > 2 * MAX_QUERY_CHARS or len(names) != len(set(names)):
        malformed = LogoutRejected("saml.logout_malformed", library_error="oversized query or repeated parameter")
        raise saml.refuse(store, malformed, ctx, event="logout")
    target = saml.single_logout(store, dict(items), raw, ctx)
    response = RedirectResponse(target, status_code=303)
    response.headers["Cache-Control"] = "no-store"
    return response
