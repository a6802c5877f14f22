"""The application factory and its lifespan.

``create_app(settings)`` builds a FastAPI app whose lifespan opens, inside one
``AsyncExitStack``: the Redis (a private embedded one when no URL is set), the job store, the
process's hub, the HTTP client for providers and, unless API-only, an in-process worker. They
are yielded as typed state; routes reach them through ``request.state.service``. Nothing is
created at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, TypedDict

import httpx
import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from . import __version__
from .embedded import EmbeddedRedis
from .errors import (
    JobFinished,
    JobNotFound,
    ProviderConfigError,
    ReviewstreamError,
    StoreError,
)
from .hub import Hub
from .keys import Keys
from .limits import BodySizeLimit
from .routes import demo, health, jobs, long_poll, metrics, sse, ws
from .service import ReviewService
from .settings import Settings
from .store import JobStore
from .worker import Worker

log = logging.getLogger(__name__)


class State(TypedDict):
    service: ReviewService
    redis: aioredis.Redis


def redis_client(url: str, max_connections: int) -> aioredis.Redis:
    """A client whose pool waits for a free connection instead of failing at its limit."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=10, decode_responses=True
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes both


@contextlib.asynccontextmanager
async def redis_url(settings: Settings) -> AsyncIterator[str]:
    """The configured Redis URL, or that of a private embedded redis-server when none is set."""
    if settings.redis_url is not None:
        yield settings.redis_url
        return
    embedded = EmbeddedRedis()
    try:
        yield await embedded.start()
    finally:
        await embedded.aclose()


def create_app(settings: Settings | None = None, *, run_worker: bool = True) -> FastAPI:
    """Build the API. ``run_worker=False`` serves the API only (workers run elsewhere)."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        async with contextlib.AsyncExitStack() as stack:
            url = await stack.enter_async_context(redis_url(settings))
            redis = redis_client(url, settings.redis_max_connections)
            stack.push_async_callback(redis.aclose)
            keys = Keys(settings.key_prefix)
            store = JobStore(redis, keys, retention_seconds=settings.retention_seconds)
            await store.ensure_group()
            hub = Hub(
                redis,
                keys,
                resync_seconds=settings.resync_seconds,
                coalesce_seconds=settings.coalesce_ms / 1000,
            )
            await hub.start()
            stack.push_async_callback(hub.aclose)
            worker = None
            if run_worker:
                http = await stack.enter_async_context(provider_http_client(settings))
                # Its own pool: a burst of followers must never starve appends and lease renewals.
                worker_redis = redis_client(url, settings.redis_max_connections)
                stack.push_async_callback(worker_redis.aclose)
                worker_store = JobStore(
                    worker_redis, keys, retention_seconds=settings.retention_seconds
                )
                worker = Worker(worker_store, hub, settings, http)
                await worker.start()
                stack.push_async_callback(worker.aclose)
            service = ReviewService(settings, store, hub, worker)
            app.state.drain = service.drain  # for begin_shutdown
            try:
                yield {"service": service, "redis": redis}
            finally:
                del app.state.drain

    app = FastAPI(
        title="reviewstream",
        version=__version__,
        summary="Performance reviews written by an LLM, delivered while they are written.",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    add_error_handlers(app)
    for module in (jobs, long_poll, sse, ws, health, metrics, demo):
        app.include_router(module.router)
    return app


def begin_shutdown(app: FastAPI) -> None:
    """A shutdown began: end the app's live streams now, so clients resume on another server.

    The server calls this when it stops accepting connections (``reviewstream serve`` does, from
    uvicorn's signal handler, in the loop's thread): SSE streams end, WebSockets close with 1012
    and held long polls answer, instead of holding the shutdown until its timeout.
    """
    drain = getattr(app.state, "drain", None)
    if drain is not None:
        asyncio.get_running_loop().call_soon_threadsafe(drain)


def provider_http_client(settings: Settings) -> httpx.AsyncClient:
    timeout = httpx.Timeout(
        connect=settings.upstream_connect_timeout,
        read=settings.upstream_idle_timeout,
        write=settings.upstream_connect_timeout,
        pool=settings.upstream_connect_timeout,
    )
    return httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=None))


def _error(status: int, message: str, detail: Any = None) -> JSONResponse:
    return JSONResponse({"error": message, "detail": detail}, status_code=status)


def add_error_handlers(app: FastAPI) -> None:
    """One place maps the exception tree to JSON answers; routes never catch these."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        where = ", ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
        return _error(422, f"invalid request: {where}", jsonable_errors(errors))

    @app.exception_handler(JobNotFound)
    async def not_found(request: Request, exc: JobNotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(JobFinished)
    async def finished(request: Request, exc: JobFinished) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(ProviderConfigError)
    async def provider_config(request: Request, exc: ProviderConfigError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(StoreError)
    async def store_down(request: Request, exc: StoreError) -> JSONResponse:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return _error(503, "storage unavailable, try again", str(exc))

    @app.exception_handler(ReviewstreamError)
    async def other(request: Request, exc: ReviewstreamError) -> JSONResponse:
        return _error(500, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, "internal error")


def jsonable_errors(errors: Any) -> list[dict[str, Any]]:
    return [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors
    ]
