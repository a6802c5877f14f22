"""The application factory and its lifespan.

``create_app(settings)`` builds a FastAPI app whose lifespan opens the process's runtime
(``reviewstream.runtime``: Redis, store, hub and, unless API-only, the workers, where
``REVIEWSTREAM_SERVE_WORKERS`` says: a child process, a thread, or this event loop) and
yields a ``ReviewService`` over it as typed state; routes reach it through
``request.state.service``. Nothing is created at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Any, TypedDict

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from .. import __version__
from ..observe.exposition import Scrapes
from ..observe.metrics import flushing
from ..runtime import open_runtime
from ..service import ReviewService
from ..settings import Settings
from .body_limit import BodySizeLimit
from .connection_cap import ConnectionCap, backstop
from .delivery import Delivery, Route, describe
from .handlers import add_error_handlers
from .protocols import LeanWebSocket
from .routes import (
    demo,
    durable,
    durable_writes,
    health,
    jobs,
    long_poll,
    metrics,
    short_poll,
    sse,
    ui_stream,
    ws,
)
from .server_close import ServerCloseIsDisconnect
from .stream_cors import StreamCors


class State(TypedDict):
    service: ReviewService


# The delivery routes, each registered here once (``web/delivery.py``).
DELIVERY: tuple[Route, ...] = (
    short_poll.ROUTE,
    long_poll.ROUTE,
    sse.ROUTE,
    ws.ROUTE,
    ui_stream.ROUTE,
    *durable.JOB_ROUTES,  # before the outside streams' routes, whose paths include them
    *durable.READ_ROUTES,
    *durable_writes.WRITE_ROUTES,
)


def create_app(settings: Settings | None = None, *, run_worker: bool = True) -> FastAPI:
    """Build the API. ``run_worker=False`` serves the API only (workers run elsewhere); else
    its lifespan runs the workers where ``settings.serve_workers`` says."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        async with (
            open_runtime(settings, worker=run_worker, workers_in=settings.serve_workers) as runtime,
            flushing(),  # the delivery paths' tallies into the metrics (observe.metrics)
        ):
            service = ReviewService.on(runtime)
            app.state.drain = service.drain  # for begin_shutdown
            # What startup built (modules, the app, its routes and models) is never garbage.
            # Frozen, a full collection no longer walks it while every request waits. Thawed at
            # shutdown, so a process that runs several apps (tests) frees them.
            gc.freeze()
            try:
                yield {"service": service}
            finally:
                gc.unfreeze()
                del app.state.drain

    app = FastAPI(
        title="reviewstream",
        version=__version__,
        summary="Performance reviews written by an LLM, delivered while they are written.",
        lifespan=lifespan,
    )
    app.state.scrapes = Scrapes(settings.metrics_max_age_seconds)  # /metrics, rendered so often
    # A WebSocket send into a socket uvicorn closed by itself (1009, 1011) is a disconnect.
    app.add_middleware(ServerCloseIsDisconnect)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    # The delivery routes, past the layers below that do nothing for them (delivery.py); CORS
    # and the cap, further out, still apply.
    app.add_middleware(Delivery, routes=DELIVERY)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            expose_headers=["X-Job-Id", "X-Stream-Token", "Location", "Retry-After"],
            max_age=600,
        )
    # Durable Streams' own CORS, outside the app's (stream_cors.py).
    app.add_middleware(StreamCors, origins=settings.cors_origin_list)
    # Outermost, so that a refused request costs nothing else.
    app.add_middleware(ConnectionCap, limit=settings.max_open_connections)
    add_error_handlers(app)
    for module in (jobs, sse, health, metrics, demo):
        app.include_router(module.router)
    fastapi_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's document of its routes, and the delivery routes' own descriptions."""
        if app.openapi_schema is None:
            describe(fastapi_openapi(), DELIVERY)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
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


def server_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options the app relies on: how WebSockets and connections are bounded.

    ``reviewstream serve`` runs with them, and so should any other way of serving the app.
    """
    return {
        # websockets-sansio (refuses an oversized frame from its header), holding less per socket.
        "ws": LeanWebSocket,
        "ws_per_message_deflate": settings.ws_per_message_deflate,
        "ws_ping_interval": settings.ws_ping_seconds,
        "ws_ping_timeout": settings.ws_ping_seconds,
        # Refused (1009) while the frame arrives, before megabytes are buffered.
        "ws_max_size": settings.ws_max_message_bytes,
        # The app's ConnectionCap answers at REVIEWSTREAM_MAX_OPEN_CONNECTIONS (JSON 503); uvicorn's
        # limit, a little above, also counts idle keep-alive connections (connection_cap.py).
        "limit_concurrency": backstop(settings.max_open_connections),
    }
