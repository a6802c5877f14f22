"""Liveness and readiness."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ...errors import StoreError
from ...models import ErrorBody
from ..deps import Service

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"model": ErrorBody, "description": "Redis is unreachable, or no worker."}},
)
async def readyz(service: Service) -> JSONResponse:
    """Ready to take a job: Redis answers and some worker's heartbeat is fresh."""
    window_ms = int(service.settings.worker_heartbeat_timeout_seconds * 1000)
    try:
        alive = await service.store.workers.workers_alive(window_ms)
    except StoreError as e:
        log.warning("readyz: %s (%r)", e, e.__cause__)
        return _unavailable("Redis is unreachable")
    if not alive:
        return _unavailable("no worker is running: jobs would not start")
    return JSONResponse({"status": "ready"})


def _unavailable(error: str) -> JSONResponse:
    return JSONResponse(
        # The error shape of every other answer, with the status a probe may look at.
        {"status": "unavailable", "error": error, "detail": None},
        status_code=503,
        headers={"Retry-After": "1"},
    )
