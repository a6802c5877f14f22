"""The delivery routes' plain requests, taken past the layers that do nothing for them.

Each request passes every layer of the app on its way in: a long poll is a request per
delivered batch, and every byte an SSE stream sends passes back up through the layers' send
wrappers. Every open stream or socket also keeps one suspended frame per layer for as long as it
is open. For the three delivery routes these layers do nothing: ``BodySizeLimit`` and FastAPI's
body limit (a GET has no body), ``ServerCloseIsDisconnect`` (only for WebSockets, and this lane
adds it itself), the routers' matching, FastAPI's ``AsyncExitStack`` (files its dependencies
open; these routes have none) and Starlette's ``ExceptionMiddleware`` (its domain-error
handlers; this lane calls the same ones). Together they cost a long poll ~10 µs of CPU
(benchmarks/README.md, "Long poll: where the time goes", round 2).

``Lanes`` sits among the app's middlewares just inside ``ConnectionCap`` and CORS, which still
apply, as do the outermost layers (the 500 answer, FastAPI's telemetry). It takes:

- a plain long poll (``routes/long_poll.plain``), answered by ``long_poll.answer``;
- a plain SSE request of ``/jobs/{id}/events`` (``routes/sse.plain_response``);
- a WebSocket of ``/jobs/{id}/ws`` (``routes/ws.JobSocket``, which reads its own parameters),
  with ``ServerCloseIsDisconnect``'s guard on its send path (``server_close.GuardedSend``).

Every other request, and every request that FastAPI's telemetry observes (its route name comes
from FastAPI's router), goes down the stack as before, where the same routes answer it the same
way. A domain error raised before a response started gets the app's handler for it, as
``ExceptionMiddleware`` would give it; any other error goes up to the 500 answer.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .routes import long_poll, sse
from .routes.ws import JobSocket
from .server_close import GuardedSend

Handler = Callable[[Request, Any], Response | Awaitable[Response]]  # the app's are all async

_EVENTS = re.compile("/jobs/([^/]+)/events")
_SOCKET = re.compile("/jobs/([^/]+)/ws")


def handler_for(handlers: Mapping[Any, Handler], exc: Exception) -> Handler | None:
    """The handler ``ExceptionMiddleware`` would pick for ``exc``; None for the 500 answer's."""
    for kind in type(exc).__mro__:
        if kind is Exception:
            return None  # ServerErrorMiddleware's, further out
        handler = handlers.get(kind)
        if handler is not None:
            return handler
    return None


class Lanes:
    """Pure ASGI: the delivery routes' plain requests, answered without the layers below."""

    def __init__(self, app: ASGIApp, handlers: Mapping[Any, Handler]) -> None:
        self.app = app
        self.handlers = handlers  # the app's, filled after the middlewares are declared
        self.socket = JobSocket()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if "fastapi.telemetry" not in scope:
            kind = scope["type"]
            if kind == "http":
                got = long_poll.plain(scope)
                if got is not None:
                    scope["path_params"] = {"job_id": got.job_id}
                    await self._http(long_poll.answer(got, scope, send), scope, receive, send)
                    return
                if scope["method"] == "GET":
                    events = _EVENTS.fullmatch(get_route_path(scope))
                    if events is not None and await self._events(events[1], scope, receive, send):
                        return
            elif kind == "websocket":
                socket = _SOCKET.fullmatch(get_route_path(scope))
                if socket is not None:
                    scope["path_params"] = {"job_id": socket[1]}
                    await self.socket(scope, receive, GuardedSend(send))
                    return
        await self.app(scope, receive, send)

    async def _events(self, job_id: str, scope: Scope, receive: Receive, send: Send) -> bool:
        """Stream a plain SSE request and say so; False leaves it to the stack."""
        scope["path_params"] = {"job_id": job_id}
        try:
            response = await sse.plain_response(scope)  # None, at once, unless plain
        except Exception as exc:
            await self._error(exc, scope, receive, send)
            return True
        if response is None:
            return False
        await response(scope, receive, send)
        return True

    async def _http(
        self, answering: Awaitable[None], scope: Scope, receive: Receive, send: Send
    ) -> None:
        try:
            await answering
        except Exception as exc:
            await self._error(exc, scope, receive, send)

    async def _error(self, exc: Exception, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer ``exc`` (raised before the response started) with the app's handler."""
        handler = handler_for(self.handlers, exc)
        if handler is None:
            raise exc
        answer = handler(Request(scope, receive), exc)
        response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)
