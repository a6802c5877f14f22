"""One place maps the exception tree (``reviewstream.errors``) to JSON answers.

Routes never catch domain errors; every 4xx/5xx body is ``{"error": "...", "detail": ...}``
and names the problem for the client, never hosts, ports, keys or commands (those are logged).
Every 503 and 429 says when to come back (``Retry-After``).
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
    Forbidden,
    JobFinished,
    JobNotFound,
    ProviderConfigError,
    Refused,
    ReviewstreamError,
    StoreError,
    Unauthorized,
)

log = logging.getLogger(__name__)


STORE_RETRY_SECONDS = 1

AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="reviewstream"'}


def error_response(
    status: int, message: str, detail: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message, "detail": detail}, status_code=status, headers=headers)


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        where = ", ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
        return error_response(422, f"invalid request: {where}", jsonable_errors(errors))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # Starlette's and FastAPI's own refusals, in our shape rather than {"detail": ...}.
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI's "error parsing the body": JSON it could not decode (not UTF-8, nested
            # too deep). An invalid body like any malformed JSON, so the documented 422.
            cause = str(exc.__cause__)[:200]
            return error_response(422, f"invalid request: body is not readable JSON ({cause})")
        message = str(exc.detail)
        if exc.status_code in (404, 405):  # the router's: name what was asked for
            message = f"{message}: {request.method} {request.url.path[:200]}"
        return error_response(exc.status_code, message, headers=dict(exc.headers or {}))

    @app.exception_handler(JobNotFound)
    async def not_found(request: Request, exc: JobNotFound) -> JSONResponse:
        return error_response(404, str(exc))

    @app.exception_handler(JobFinished)
    async def finished(request: Request, exc: JobFinished) -> JSONResponse:
        return error_response(409, str(exc))

    @app.exception_handler(ProviderConfigError)
    async def provider_config(request: Request, exc: ProviderConfigError) -> JSONResponse:
        return error_response(422, str(exc))

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return error_response(401, str(exc), headers=AUTHENTICATE)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> JSONResponse:
        return error_response(403, str(exc))

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        return error_response(
            exc.status, str(exc), {"limit": exc.limit}, headers=retry_after(exc.retry_after)
        )

    @app.exception_handler(StoreError)
    async def store_down(request: Request, exc: StoreError) -> JSONResponse:
        log.warning("%s %s: %s (%r)", request.method, request.url.path, exc, exc.__cause__)
        return error_response(
            503, "storage unavailable, try again", headers=retry_after(STORE_RETRY_SECONDS)
        )

    @app.exception_handler(ReviewstreamError)
    async def other(request: Request, exc: ReviewstreamError) -> JSONResponse:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return error_response(500, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error")


def jsonable_errors(errors: Any) -> list[dict[str, Any]]:
    return [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors
    ]
