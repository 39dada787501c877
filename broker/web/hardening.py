"""The broker's own middleware, both pure ASGI (no per-request task or response copy, unlike Starlette's
``BaseHTTPMiddleware``): request size limits, and the response headers and access log line of every request.

Request size limits apply before any route or parser sees the request:

* All request headers together larger than ``server.max_header_bytes``: 431 (RFC 6585 section 5).
* A body larger than ``server.max_body_bytes``: 413 (RFC 9110 section 15.5.14), either at once from
  ``Content-Length`` or, for a chunked body, as soon as the running total passes the cap (reading the body
  then raises a 413 ``HTTPException``, rendered as :class:`~broker.errors.PayloadTooLarge` by the one handler).

Routes keep their own, tighter caps (the SAML ACS, the token endpoint), which audit the refusal with a
protocol-specific reason. These outer caps are only logged: they sit in front of everything, including
unauthenticated floods, and an audit append per oversized request would let a flood serialize on the
audit chain head (see ``broker.ratelimit``).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.logs import get_logger, request_context

if TYPE_CHECKING:
    from broker.monitoring import Metrics

log = get_logger("broker.access")
# Whether the access log line is wanted is the standard library's call (``broker.logs`` routes through it).
_access_level = logging.getLogger("broker.access")


class RequestLimits:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        if sum(len(name) + len(value) + 4 for name, value in headers) > self.max_header_bytes:
            await _refuse(scope, send, 431, "request_header_fields_too_large", "The request headers are too large.")
            return
        declared = next((value for name, value in headers if name == b"content-length"), None)
        if declared is not None:
            if not declared.isdigit():
                await _refuse(scope, send, 400, "invalid_request", "The Content-Length header is malformed.")
                return
            if int(declared) > self.max_body_bytes:
                await _refuse(scope, send, 413, "payload_too_large", "The request is too large.")
                return
        received = 0
        limit = self.max_body_bytes
        overflowed = False
        refused = False

        async def capped() -> Message:
            nonlocal received, overflowed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflowed = True
                    log.info("request refused", reason="request_too_large", path=scope.get("path", ""))
                    # An HTTPException passes FastAPI's body parsing unchanged; web/errors.py renders it as 413.
                    raise HTTPException(status_code=413)
            return message

        async def guarded_send(message: Message) -> None:
            # Middleware between here and the route may turn the exception into another error response (or
            # the route may have parsed a truncated body): whatever the app answers, the client gets the 413.
            nonlocal refused
            if overflowed:
                if message["type"] == "http.response.start":
                    refused = True
                    await _refuse(scope, send, 413, "payload_too_large", "The request is too large.")
                return
            await send(message)

        await self.app(scope, capped, guarded_send)
        if overflowed and not refused:
            await _refuse(scope, send, 413, "payload_too_large", "The request is too large.")


class ObserveRequests:
    """Tag each request with an id, add the security headers to its response, count it, and log one line.

    The request id is the caller's ``X-Request-Id`` (first 64 characters) or a fresh UUID; routes read it as
    ``request.state.request_id`` and audit events carry it. It is also bound to the logging context for the
    whole request, so every line logged while handling it (``request refused``, ``rate limited``, a library's
    warning) carries ``request_id``. The access line names the path only, never the query string (it may carry
    codes and state values), and the client address as resolved through ``server.forwarded_allow_ips``; it is
    built only when the access log is enabled. Metrics label requests by route template (``/saml/{store}/acs``),
    never the raw path.
    """

    def __init__(self, app: ASGIApp, *, headers: Sequence[tuple[str, str]], metrics: Metrics | None = None) -> None:
        self.app = app
        self.headers = [(name.lower().encode(), value.encode()) for name, value in headers]
        self._names = {name for name, _ in self.headers} | {b"x-request-id"}
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = ""
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                request_id = value.decode("latin-1")[:64]
                break
        request_id = request_id or str(uuid.uuid4())
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Replace, never duplicate, a header a route set itself.
                kept = [(n, v) for n, v in message.get("headers", ()) if n.lower() not in self._names]
                message["headers"] = [*kept, (b"x-request-id", request_id.encode("latin-1")), *self.headers]
            await send(message)

        with request_context(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_headers)
            finally:
                elapsed = time.perf_counter() - started
                # An exception that escaped every handler is answered 500 by the server.
                status = status or 500
                if self.metrics is not None:
                    self.metrics.observe_request(scope["method"], route_template(scope), status, elapsed)
                if _access_level.isEnabledFor(logging.INFO):
                    client = scope.get("client")
                    log.info(
                        "request",
                        method=scope["method"],
                        path=scope["path"],
                        status=status,
                        client_ip=client[0] if client else None,
                        principal=state.get("principal"),
                        outcome=state.get("outcome", "ok" if status < 400 else "error"),
                        ms=round(elapsed * 1000, 1),
                    )


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/saml/{store}/acs``), the mount's prefix for a mounted app
    (``/static``), or ``unmatched``: a bounded set of label values, whatever paths clients send."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if isinstance(template, str) and template:
        return template
    root = scope.get("app_root_path") or scope.get("root_path") or ""
    if scope.get("endpoint") is not None and root:
        return str(root) + "/{path}"
    return "unmatched"


async def _refuse(scope: Scope, send: Send, status: int, code: str, message: str) -> None:
    log.info("request refused", reason=code, status=status, path=scope.get("path", ""))
    body = json.dumps({"error": code, "error_description": message}).encode()
    start: dict[str, Any] = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            (b"connection", b"close"),
        ],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})
