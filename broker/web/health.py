"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from broker.store.db import is_ready
from broker.web.deps import BrokerDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: database reachable and migrated to head")
def readyz(broker: BrokerDep) -> JSONResponse:
    ready, detail = is_ready(broker.db)
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "detail": detail}, status_code=200 if ready else 503
    )
