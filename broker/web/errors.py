"""The one place broker errors become HTTP responses: JSON for APIs, a page for people."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from broker.errors import (
    BrokerError,
    InvalidRequest,
    LoginRequired,
    NotFound,
    PayloadTooLarge,
    ScimError,
    ServiceUnavailable,
)
from broker.logs import get_logger
from broker.web.cookies import session_cookie

log = get_logger("broker.web")
_API_PREFIXES = ("/api/", "/oauth2/", "/healthz", "/readyz", "/.well-known/", "/jwks", "/scim/")
SCIM_PREFIX = "/scim/"
SCIM_ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"


def wants_html(request: Request) -> bool:
    if request.url.path.startswith(_API_PREFIXES):
        return False
    return "text/html" in request.headers.get("accept", "")


def _signed_in(request: Request) -> bool:
    """Whether the error page may offer "Back to your roles": a live session, not merely a cookie."""
    if getattr(request.state, "principal", None) is not None:
        return True
    cookie = session_cookie(request)
    if not cookie:
        return False
    try:
        request.app.state.broker.current_session(cookie)
    except BrokerError:
        return False
    return True


def render_error(request: Request, error: BrokerError) -> Response:
    request.state.outcome = error.reason
    retry_after = error.retry_after or (ServiceUnavailable.default_retry_after if error.status == 503 else None)
    headers = {"Retry-After": str(retry_after)} if retry_after else {}
    if wants_html(request):
        if isinstance(error, LoginRequired) and request.method == "GET":
            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        templates = request.app.state.templates
        page: Response = templates.TemplateResponse(
            request,
            "error.html",
            {"error": error, "title": "Something went wrong", "signed_in": _signed_in(request)},
            status_code=error.status,
            headers=headers,
        )
        return page
    if request.url.path.startswith(SCIM_PREFIX):
        return _scim_error(error, headers)
    body = {"error": error.code, "error_description": error.message}
    # RFC 6749 section 5.2: a failed client authentication names the scheme the client used (Basic here);
    # a failed bearer token gets an RFC 6750 challenge. Error bodies are never cached.
    headers["Cache-Control"] = "no-store"
    if error.code == "invalid_client":
        headers["WWW-Authenticate"] = 'Basic realm="broker"'
    elif error.status == 401:
        headers["WWW-Authenticate"] = f'Bearer error="{error.code}"'
    return JSONResponse(body, status_code=error.status, headers=headers)


def _scim_error(error: BrokerError, headers: dict[str, str]) -> Response:
    """RFC 7644 section 3.12: a SCIM Error message (status as a string, scimType where the RFC has one)."""
    body: dict[str, object] = {"schemas": [SCIM_ERROR_SCHEMA], "status": str(error.status), "detail": error.message}
    scim_type = error.scim_type if isinstance(error, ScimError) else None
    if scim_type:
        body["scimType"] = scim_type
    headers["Cache-Control"] = "no-store"
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="SCIM"'
    return JSONResponse(body, status_code=error.status, headers=headers, media_type="application/scim+json")


def install(app: FastAPI) -> None:
    @app.exception_handler(BrokerError)
    async def _broker_error(request: Request, exc: BrokerError) -> Response:
        # `error`, not `code`: log scrubbing redacts any field named `code` (OAuth authorization codes).
        log.info("request refused", error=exc.code, reason=exc.reason, path=request.url.path)
        return render_error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        fields = ", ".join(".".join(str(p) for p in e["loc"][1:]) for e in exc.errors()) or "the request"
        return render_error(request, InvalidRequest(f"Missing or invalid: {fields}.", reason="request_invalid"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return render_error(request, NotFound())
        if exc.status_code == 405:
            return render_error(
                request, InvalidRequest("This address does not accept that method.", reason="method_not_allowed")
            )
        if exc.status_code == 413:
            return render_error(request, PayloadTooLarge(reason="request_too_large"))
        if 400 <= exc.status_code < 500:
            # e.g. FastAPI's "error parsing the body": the client's fault, never a 500.
            return render_error(request, InvalidRequest("The request could not be read.", reason="request_invalid"))
        return render_error(request, BrokerError())

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error", error_type=type(exc).__name__, path=request.url.path)
        return render_error(request, BrokerError())
