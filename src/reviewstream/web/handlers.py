"""One place maps the exception tree (``reviewstream.errors``) to JSON answers.

Routes never catch domain errors; every 4xx/5xx body is ``{"error": "...", "detail": ...}``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..errors import JobFinished, JobNotFound, ProviderConfigError, ReviewstreamError, StoreError

log = logging.getLogger(__name__)


def error_response(status: int, message: str, detail: Any = None) -> JSONResponse:
    return JSONResponse({"error": message, "detail": detail}, status_code=status)


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        where = ", ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
        return error_response(422, f"invalid request: {where}", jsonable_errors(errors))

    @app.exception_handler(JobNotFound)
    async def not_found(request: Request, exc: JobNotFound) -> JSONResponse:
        return error_response(404, str(exc))

    @app.exception_handler(JobFinished)
    async def finished(request: Request, exc: JobFinished) -> JSONResponse:
        return error_response(409, str(exc))

    @app.exception_handler(ProviderConfigError)
    async def provider_config(request: Request, exc: ProviderConfigError) -> JSONResponse:
        return error_response(422, str(exc))

    @app.exception_handler(StoreError)
    async def store_down(request: Request, exc: StoreError) -> JSONResponse:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return error_response(503, "storage unavailable, try again", str(exc))

    @app.exception_handler(ReviewstreamError)
    async def other(request: Request, exc: ReviewstreamError) -> JSONResponse:
        return error_response(500, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error")


def jsonable_errors(errors: Any) -> list[dict[str, Any]]:
    return [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors
    ]
