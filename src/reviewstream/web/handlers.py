"""One place maps the exception tree (``reviewstream.errors``) to answers.

Each domain error knows its ``http_status``; ``error_answer`` makes its JSON answer and
``close_code`` its WebSocket close code (``4000 + http_status``; a draining server's 1012),
from that one table. Routes never catch domain errors; every 4xx/5xx body is
``{"error": "...", "detail": ...}`` and names the problem for the client, never hosts, ports,
keys or commands (those are logged). Every 503 and 429 says when to come back (``Retry-After``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import (
    InvalidInput,
    Refused,
    ReviewstreamError,
    ServerDraining,
    StoreError,
    Unauthorized,
)
from ..observe.metrics import refused
from ..wire import CloseCode

log = logging.getLogger(__name__)


STORE_RETRY_SECONDS = 1

AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="reviewstream"'}


def error_response(
    status: int, message: str, detail: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message, "detail": detail}, status_code=status, headers=headers)


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def error_answer(exc: ReviewstreamError, request: str) -> JSONResponse:
    """The JSON answer to a domain error; ``request`` (method and path) names it in the log."""
    status = exc.http_status
    refused(status, type(exc).__name__)
    if isinstance(exc, InvalidInput):
        detail = [{"loc": list(exc.where), "msg": exc.problem, "type": "value_error"}]
        return error_response(status, str(exc), detail)
    if isinstance(exc, Unauthorized):
        return error_response(status, str(exc), headers=AUTHENTICATE)
    if isinstance(exc, Refused):
        headers = retry_after(exc.retry_after)
        return error_response(status, str(exc), {"limit": exc.limit}, headers=headers)
    if isinstance(exc, StoreError):
        log.warning("%s: %s (%r)", request, exc, exc.__cause__)
        message = "storage unavailable, try again"
        return error_response(status, message, headers=retry_after(STORE_RETRY_SECONDS))
    if status >= 500:
        log.warning("%s: %s", request, exc)
    if status == 503:
        return error_response(status, str(exc), headers=retry_after(STORE_RETRY_SECONDS))
    return error_response(status, str(exc))


def close_code(exc: ReviewstreamError) -> int:
    """The WebSocket close code of a domain error: ``4000 + http_status``, but a draining
    server's is RFC 6455's service restart (reconnect and resume elsewhere)."""
    refused(exc.http_status, type(exc).__name__)
    if isinstance(exc, ServerDraining):
        return CloseCode.SERVICE_RESTART
    return 4000 + exc.http_status


def add_error_handlers(app: FastAPI) -> None:
    """The app's handlers: the domain's table, and the framework's own refusals in our shape."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        refused(422, "InvalidInput")
        where = ", ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
        return error_response(422, f"invalid request: {where}", jsonable_errors(errors))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # Starlette's and FastAPI's own refusals, in our shape rather than {"detail": ...}.
        refused(exc.status_code, "HTTPException")
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI's "error parsing the body": JSON it could not decode (not UTF-8, nested
            # too deep). An invalid body like any malformed JSON, so the documented 422.
            cause = str(exc.__cause__)[:200]
            return error_response(422, f"invalid request: body is not readable JSON ({cause})")
        message = str(exc.detail)
        if exc.status_code in (404, 405):  # the router's: name what was asked for
            message = f"{message}: {request.method} {request.url.path[:200]}"
        return error_response(exc.status_code, message, headers=dict(exc.headers or {}))

    @app.exception_handler(ReviewstreamError)
    async def domain(request: Request, exc: ReviewstreamError) -> JSONResponse:
        return error_answer(exc, f"{request.method} {request.url.path}")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error")


def jsonable_errors(errors: Any) -> list[dict[str, Any]]:
    return [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors
    ]
