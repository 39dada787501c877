"""Liveness and readiness probes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from broker.errors import ServiceUnavailable
from broker.store.migrations import is_ready
from broker.web.deps import ServicesDep

if TYPE_CHECKING:
    from broker.services import Services

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: database reachable and migrated to head, AWS credentials configured, stored keys readable",
)
def readyz(services: ServicesDep) -> JSONResponse:
    ready, detail = is_ready(services.db)
    body = {"status": "ok" if ready else "unavailable", "detail": detail}
    # Without AWS credentials of its own the broker cannot issue anything: a configuration error, named.
    aws_problem = services.sts.configuration_problem
    if aws_problem is not None:
        ready = False
        body.update(status="unavailable", aws="misconfigured", aws_detail=aws_problem)
    # A signing key or factor the configured keys cannot decrypt would fail every token or TOTP sign-in.
    keys_problem = stored_keys_problem(services) if ready else None
    if keys_problem is not None:
        ready = False
        body.update(status="unavailable", keys="undecryptable", keys_detail=keys_problem)
    if ready:
        return JSONResponse(body)
    # Like every 503 of the broker, it says when to look again (RFC 9110 section 10.2.3).
    retry = {"Retry-After": str(ServiceUnavailable.default_retry_after)}
    return JSONResponse(body, status_code=503, headers=retry)


def stored_keys_problem(services: Services) -> str | None:
    """Why stored signing keys or TOTP secrets cannot be decrypted (naming no secret), else None."""
    from broker.errors import BrokerError
    from broker.keyring import Keyring

    try:
        return Keyring(services.settings, db=services.db, keys=services.keys).readiness_problem()
    except BrokerError as exc:
        return f"stored keys could not be checked: {exc.reason}"
