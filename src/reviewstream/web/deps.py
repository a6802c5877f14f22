"""What routes share: the service and caller dependencies of the FastAPI routes, documented
errors, and the answers that carry job text (with their headers)."""

from __future__ import annotations

from typing import Annotated, Any, cast

from fastapi import Depends, Path
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection
from starlette.types import Receive, Scope, Send

from ..models import ErrorBody
from ..service import ReviewService
from ..tenancy import Principal
from .params import JOB_ID_PATTERN, credentials

# Job text is confidential: never cached, never sniffed into something else.
PRIVATE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


async def get_service(connection: HTTPConnection) -> ReviewService:
    # async: a plain def would make FastAPI hop to a thread pool on every request.
    return cast(ReviewService, connection.state.service)


# Declared for the OpenAPI document only: neither refuses, and what they parse is not used.
_bearer = HTTPBearer(
    auto_error=False,
    description="An API key (REVIEWSTREAM_API_KEYS), or a job's stream token.",
)
_token = APIKeyQuery(
    name="token",
    auto_error=False,
    description="A job's stream token, as its links carry it (EventSource, browser WebSocket).",
)


async def get_caller(
    connection: HTTPConnection,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    _token: Annotated[str | None, Depends(_token)],
) -> Principal:
    """The caller, read as every route reads it (``params.credentials``)."""
    service = await get_service(connection)
    return service.gate.principal(*credentials(connection.scope))


Service = Annotated[ReviewService, Depends(get_service)]
Caller = Annotated[Principal, Depends(get_caller)]
JobId = Annotated[
    str,
    Path(
        pattern=JOB_ID_PATTERN,
        description="The job id returned by POST /jobs.",
        examples=["3f2b9c0e8d7a4b6c9e1f0a2b3c4d5e6f"],
    ),
]


class JsonAnswer:
    """A 200 answer with job text in it, as JSON already encoded (``wire``)."""

    __slots__ = ("body",)

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [*_HEAD, (b"content-length", b"%d" % len(self.body)), _JSON]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


# Its head but the length, as a ``JSONResponse`` with ``PRIVATE_HEADERS`` sends it, encoded once.
_HEAD = [(name.lower().encode(), value.encode()) for name, value in PRIVATE_HEADERS.items()]
_JSON = (b"content-type", b"application/json")


# A poll's answer, as the OpenAPI document declares it.
PAGE: dict[str, Any] = {
    "description": "Successful Response",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobPage"}}},
}


def _error(description: str) -> dict[str, object]:
    return {"model": ErrorBody, "description": description}


# The error answers every route documents in the OpenAPI document: one schema for all.
AUTH_ERRORS: dict[int | str, dict[str, object]] = {
    401: _error("No credential, an unknown API key, or an expired or forged stream token."),
    403: _error("The credential may not do this (a stream token creating a job)."),
    503: _error("Storage unavailable, no worker alive, or the queue is full (Retry-After)."),
}
JOB_ERRORS: dict[int | str, dict[str, object]] = {
    **AUTH_ERRORS,
    404: _error("Unknown job, expired after retention, or another key's job."),
    422: _error("Invalid id, offset or body."),
    429: _error("A per-key limit: open streams (Retry-After)."),
}
CREATE_ERRORS: dict[int | str, dict[str, object]] = {
    **AUTH_ERRORS,
    413: _error("The request body is too large."),
    422: _error("Invalid body, or a provider or model this deployment cannot run."),
    429: _error("A per-key limit: active jobs or jobs per minute (Retry-After)."),
}


def json_errors(errors: dict[int | str, dict[str, object]]) -> dict[int | str, dict[str, object]]:
    """``errors`` for a route whose own answer is not JSON (an event stream).

    FastAPI documents a ``model`` in the route's media type, which would declare the JSON error
    bodies as ``text/event-stream``; these name the JSON and the one schema explicitly instead.
    """
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    return {
        status: {"description": answer["description"], "content": content}
        for status, answer in errors.items()
    }
