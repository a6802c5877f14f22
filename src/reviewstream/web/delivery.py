"""The delivery routes: each registered once, reached one way, read by one parser.

A delivery route is a request per batch (polls) or a connection held for a whole job (SSE,
WebSocket), so what runs per request and what an open stream holds per layer are its cost.
``Delivery`` is a small ASGI router among the app's middlewares, just inside ``ConnectionCap``
and CORS (which still apply): it owns the delivery paths and answers them without the
framework's route matching, dependency solving and response models, which do nothing for them.
Every other request goes on down the app's stack.

For each request of a delivery path: the caller from its credentials (``params.credentials``,
401 first, as for every route), then the route's parameters (``params.read``, 422), then the
route's endpoint, which calls the service and encodes through ``wire``. A domain error raised
before the answer starts is answered from the one table (``handlers.error_answer``); a
WebSocket route tells its errors by close code from the same table. Another method on a path of
its own is a 405; on a path shared with the app's routes (``DELETE /jobs/{id}``) it goes on down.

Each route also describes itself (``Operation``) and ``describe`` adds it to the app's OpenAPI
document, from the same ``Param`` declarations that read the request.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic.json_schema import models_json_schema
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import ReviewstreamError
from ..models import JobPage
from ..observe import metrics as observe
from ..service import ReviewService
from ..tenancy import Principal
from .handlers import error_answer, error_response
from .params import Param, Params, credentials, read
from .server_close import GuardedSend

log = logging.getLogger(__name__)

HttpEndpoint = Callable[[ReviewService, Params, Principal], Awaitable[ASGIApp]]
SocketEndpoint = Callable[[Scope, Receive, Send], Awaitable[None]]
# A dialect's endpoint that reads its own headers and body (Durable Streams' writes).
ExchangeEndpoint = Callable[[ReviewService, Scope, Receive, Principal], Awaitable[ASGIApp]]
# A dialect's answer to a domain error, in its protocol's words (default: ``error_answer``).
ErrorAnswer = Callable[[ReviewstreamError, str], ASGIApp]

SECURITY: list[dict[str, list[str]]] = [
    {"HTTPBearer": []},
    {"APIKeyQuery": []},
]  # the schemes the app's other routes declare
_REF = "#/components/schemas/{model}"
_CONVERTER = re.compile(r"\{(\w+):\w+\}")


@dataclass(frozen=True)
class Operation:
    """How the OpenAPI document describes a route (a WebSocket route has none). A route that
    reads its own request (``exchange``) declares its parameters and body here, as OpenAPI
    objects; the others' come from their ``Param``s."""

    summary: str
    description: str
    tags: tuple[str, ...]
    responses: dict[int | str, dict[str, Any]]
    parameters: tuple[dict[str, Any], ...] = ()
    request_body: dict[str, Any] | None = None


@dataclass(frozen=True)
class Route:
    """One delivery route. ``endpoint`` answers an HTTP request with a response to send;
    a WebSocket route's ``socket`` runs the session, reading its own handshake. A dialect with
    a published protocol may take the request whole (``exchange``: its headers and body) and
    answer errors its own way (``answer``). Several routes may share a path, one per method."""

    name: str
    path: str
    takes: tuple[Param, ...]
    endpoint: HttpEndpoint | None = None
    socket: SocketEndpoint | None = None
    operation: Operation | None = None
    exchange: ExchangeEndpoint | None = None
    answer: ErrorAnswer | None = None
    method: str = "GET"
    shares_path: bool = False  # other methods of the path are the app's other routes'
    mode: str | None = None  # its ``observe.metrics.MODES`` name: connections counted by it
    held: bool = False  # held for a job's life (a stream, a socket): its close is logged
    pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", compile_path(self.path)[0])

    @property
    def kind(self) -> str:
        return "websocket" if self.socket is not None else "http"


class Delivery:
    """Pure ASGI: the delivery routes' requests, answered here; every other, down the stack."""

    def __init__(self, app: ASGIApp, routes: Sequence[Route]) -> None:
        self.app = app
        self.routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            path = route_path(scope)
            refused: list[Route] = []  # the path's routes of other methods
            for route in self.routes:
                match = route.pattern.match(path)
                if match is None or route.kind != kind:
                    continue
                scope["path_params"] = match.groupdict()
                if route.socket is None and scope["method"] != route.method:
                    if not route.shares_path:
                        refused.append(route)
                    continue
                # Open in its mode while it runs (reviewstream_connections): a plain number.
                tally = observe.tally(route.mode) if route.mode is not None else None
                if tally is not None:
                    tally.open += 1
                started = time.monotonic() if route.held else 0.0
                try:
                    if route.socket is not None:
                        await route.socket(scope, receive, GuardedSend(send))
                    else:
                        await self._http(route, scope, receive, send)
                finally:
                    if tally is not None:
                        tally.open -= 1
                    if route.held:
                        _closed(route, scope, started)
                return
            if refused:
                await self._not_allowed(refused, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _http(self, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        service: ReviewService = scope["state"]["service"]
        try:
            caller = scope["reviewstream.caller"] = service.gate.principal(*credentials(scope))
            if route.exchange is not None:
                response = await route.exchange(service, scope, receive, caller)
            else:
                assert route.endpoint is not None
                params = read(scope, route.takes, scope["path_params"].get("job_id"))
                response = await route.endpoint(service, params, caller)
        except ReviewstreamError as exc:
            response = (route.answer or error_answer)(exc, f"{scope['method']} {scope['path']}")
        await response(scope, receive, send)

    async def _not_allowed(
        self, routes: list[Route], scope: Scope, receive: Receive, send: Send
    ) -> None:
        message = f"Method Not Allowed: {scope['method']} {scope['path'][:200]}"
        allow = ", ".join(dict.fromkeys(route.method for route in routes))
        response = error_response(405, message, headers={"Allow": allow})
        await response(scope, receive, send)


def _closed(route: Route, scope: Scope, started: float) -> None:
    """A held connection ended: one log line with its job, mode, key and duration (uvicorn's
    access line was written when it began)."""
    caller = scope.get("reviewstream.caller")
    if caller is None:
        return  # refused before it was open (401): its access line says so
    job_id = scope["path_params"].get("job_id")
    ms = round((time.monotonic() - started) * 1000, 1)
    mode = route.mode or route.name
    extra = {"job_id": job_id, "mode": mode, "duration_ms": ms}
    if caller.tenant:
        extra["key"] = caller.tenant  # the API key's name
    log.info("%s of job %s closed after %.0f ms", mode, job_id, ms, extra=extra)


def route_path(scope: Scope) -> str:
    """The request's path within the app (without the ``root_path`` it is mounted at)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def describe(document: dict[str, Any], routes: Sequence[Route]) -> None:
    """Add the routes' operations (and the schemas they refer to) to an OpenAPI document."""
    paths = document.setdefault("paths", {})
    for route in routes:
        if route.operation is None:
            continue
        op = route.operation
        path = _CONVERTER.sub(r"{\1}", route.path)  # `{path:path}` is `{path}` in OpenAPI
        operation_id = re.sub(r"\W", "_", f"{route.name}{path}") + "_" + route.method.lower()
        described: dict[str, Any] = {
            "tags": list(op.tags),
            "summary": op.summary,
            "description": op.description,
            "operationId": operation_id,
            "security": SECURITY,
            "parameters": [param.openapi() for param in route.takes] + list(op.parameters),
            "responses": {str(status): answer for status, answer in op.responses.items()},
        }
        if op.request_body is not None:
            described["requestBody"] = op.request_body
        paths.setdefault(path, {})[route.method.lower()] = described
    _, schemas = models_json_schema([(JobPage, "serialization")], ref_template=_REF)
    components = document.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in schemas.get("$defs", {}).items():
        components.setdefault(name, schema)
