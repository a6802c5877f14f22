"""The per-process cap on open connections (``REVIEWSTREAM_MAX_OPEN_CONNECTIONS``), pure ASGI.

What is counted: every HTTP request this process is serving, from its headers to the end of
its response (a short poll for milliseconds, a held long poll, an SSE stream for the whole
job), and every WebSocket session, from its handshake to its close. That is what an open
connection costs the process: a task, a follower, buffers. Beyond the cap a request is
answered at once with the project's JSON 503 (``{"error", "detail": {"limit": …}}``,
``Retry-After``, ``Connection: close``) and a WebSocket handshake with the same answer as HTTP
before the upgrade (where the server supports the ASGI denial response; else it is accepted and
closed with 4503). The count is one integer in the app: no wrapper sits on the send path of a
stream, so the cap costs nothing per token.

What is not counted: an idle keep-alive connection between two requests, and a connection still
sending its request headers. They hold a socket and no task. uvicorn's own
``limit_concurrency`` bounds them (``backstop``): it counts every open connection, idle ones
included, and is set a little above the cap, so it only answers (with its own plain-text 503)
when idle connections pile up on a full process. A connection that never finishes its headers
is never answered at all by uvicorn, which has no header read timeout: a reverse proxy in front
adds one (``client_header_timeout`` in ``deploy/nginx.conf``).

Why not uvicorn's limit alone: its answer is ``text/plain`` (not the error schema, no
``Retry-After``), a WebSocket upgrade skips its check altogether, and because it counts idle
keep-alive connections, a few idle clients refuse real work on a small cap.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from ..admission import RETRY_SECONDS
from ..observe.metrics import refused
from ..wire import CloseCode
from .handlers import error_response, retry_after

log = logging.getLogger(__name__)

LIMIT = "REVIEWSTREAM_MAX_OPEN_CONNECTIONS"


def backstop(limit: int) -> int:
    """uvicorn's ``limit_concurrency`` for a cap of ``limit``: room for idle connections.

    At the cap, a refused request arrives on a connection of its own beside ``limit`` busy
    ones, so uvicorn's limit must exceed ``limit + 1`` for the JSON answer to be the one given;
    a tenth more (at least 10) leaves room for idle keep-alive connections.
    """
    return limit + max(limit // 10, 10)


class ConnectionCap:
    """Serve at most ``limit`` requests and WebSocket sessions at once; 503 beyond."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.open = 0
        self._full = False  # log once when the cap is reached, not once per refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.open >= self.limit:
            await self._refuse(scope, receive, send)
            return
        self._full = False
        self.open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open -= 1

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._full:
            self._full = True
            log.warning("%d connections open (%s): answering 503", self.limit, LIMIT)
        message = f"this server has {self.limit} connections open ({LIMIT}): try again later"
        refused(503, "ConnectionCap")
        response = error_response(
            503,
            message,
            {"limit": LIMIT},
            headers={**retry_after(RETRY_SECONDS), "Connection": "close"},
        )
        if scope["type"] == "http":
            await response(scope, receive, send)
            return
        websocket = WebSocket(scope, receive, send)
        if "websocket.http.response" in scope.get("extensions", {}):
            await websocket.send_denial_response(response)
        else:
            await websocket.accept()
            await websocket.close(CloseCode.UNAVAILABLE, message[:120])
