"""Liveness and readiness."""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Redis is unreachable."}})
async def readyz(request: Request) -> JSONResponse:
    """The process can serve: Redis answers."""
    redis = cast(aioredis.Redis, request.state.redis)
    try:
        await redis.ping()
    except (RedisError, OSError) as e:
        return JSONResponse({"status": "unavailable", "error": f"Redis: {e}"}, status_code=503)
    return JSONResponse({"status": "ready"})
