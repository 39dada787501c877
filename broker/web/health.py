"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from broker.errors import ServiceUnavailable
from broker.store.db import is_ready
from broker.web.deps import BrokerDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: database reachable and migrated to head")
def readyz(broker: BrokerDep) -> JSONResponse:
    ready, detail = is_ready(broker.db)
    if ready:
        return JSONResponse({"status": "ok", "detail": detail})
    # Like every 503 of the broker, it says when to look again (RFC 9110 section 10.2.3).
    retry = {"Retry-After": str(ServiceUnavailable.default_retry_after)}
    return JSONResponse({"status": "unavailable", "detail": detail}, status_code=503, headers=retry)
