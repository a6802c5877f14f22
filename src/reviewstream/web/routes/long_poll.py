"""Long polling: the short poll's answer, held until there is something new.

A long poll is a request per delivered batch, so the framework's work per request was most of
its cost (benchmarks/README.md, "Long poll: where the time goes"): matching the routes before
it, solving the dependencies (caller, service, four validated parameters), two exit stacks, and
the response model on the way out. So there are two ways in. ``PlainLongPoll``, first among the
app's routes, takes a plain request: a GET of this path whose job id, ``offset``, ``limit``,
``timeout`` and ``token`` are plain ASCII (digits, no percent-escapes) within the declared
bounds, with at most one ``Authorization`` header. It reads them as FastAPI would, asks the
gatekeeper for the caller and sends the service's bytes. Any other request does not match it
and reaches the FastAPI route below, which is what the OpenAPI document declares: every 422 is
FastAPI's own, and both ways answer the same bytes with the same headers. Domain errors raised
on either way reach the app's handlers (``web/handlers.py``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from starlette._utils import get_route_path
from starlette.datastructures import URLPath
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

from ...models import JobPage
from ...service import ReviewService
from ..deps import (
    JOB_ERRORS,
    JOB_ID_PATTERN,
    MAX_OFFSET,
    PRIVATE_HEADERS,
    Caller,
    JobId,
    Limit,
    Offset,
    PrivateJSONResponse,
    Service,
    bearer_of,
)

PATH = "/jobs/{job_id}/long-poll"
MAX_HOLD_SECONDS = 300
MAX_LIMIT = 10000
DEFAULT_HOLD_SECONDS = 20.0

router = APIRouter(tags=["delivery"])


@router.get(PATH, response_model=JobPage, response_class=PrivateJSONResponse, responses=JOB_ERRORS)
async def long_poll(
    job_id: JobId,
    service: Service,
    caller: Caller,
    offset: Offset = 0,
    limit: Limit = None,
    hold_seconds: Annotated[
        float,
        Query(
            alias="timeout",
            gt=0,
            le=MAX_HOLD_SECONDS,
            description="Seconds to hold the request (capped by the server's maximum).",
        ),
    ] = DEFAULT_HOLD_SECONDS,
) -> Response:
    """Long poll: answers on the next token(s), the end, or after `timeout` with none."""
    body = await service.long_poll(job_id, offset, limit, hold_seconds, caller)
    return Response(body, headers=PRIVATE_HEADERS, media_type="application/json")


# -- the plain way in ----------------------------------------------------------------------

_PATH = re.compile("/jobs/(" + JOB_ID_PATTERN.strip("^$") + ")/long-poll")
_DIGITS = re.compile(rb"[0-9]{1,16}")
_SECONDS = re.compile(rb"[0-9]{1,6}(?:\.[0-9]{1,9})?")
_TOKEN = re.compile(rb"[A-Za-z0-9._~-]*")  # what a stream token is made of: no escapes
# The FastAPI route's head, in its order, but the length.
_HEAD = [(name.lower().encode(), value.encode()) for name, value in PRIVATE_HEADERS.items()]
_JSON = (b"content-type", b"application/json")


class Plain:
    """A long poll's parameters, read from a plain request."""

    __slots__ = ("bearer", "hold", "job_id", "limit", "offset", "token")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.offset = 0
        self.limit: int | None = None
        self.hold = DEFAULT_HOLD_SECONDS
        self.token: str | None = None
        self.bearer: str | None = None


def plain(scope: Scope) -> Plain | None:
    """The request's parameters when it is a plain long poll; None for anything else.

    The values are those FastAPI validates to (of a repeated parameter, the last, as there);
    None leaves the request to the FastAPI route, which refuses it or reads what this does not.
    """
    if scope["type"] != "http" or scope["method"] != "GET":
        return None
    path = _PATH.fullmatch(get_route_path(scope))
    if path is None:
        return None
    got = Plain(path.group(1))
    query: bytes = scope["query_string"]
    if query:
        if b"%" in query or b"+" in query:
            return None
        for pair in query.split(b"&"):
            name, _, value = pair.partition(b"=")
            if name == b"offset":
                if not _DIGITS.fullmatch(value) or int(value) > MAX_OFFSET:
                    return None
                got.offset = int(value)
            elif name == b"limit":
                if not _DIGITS.fullmatch(value) or not 1 <= int(value) <= MAX_LIMIT:
                    return None
                got.limit = int(value)
            elif name == b"timeout":
                if not _SECONDS.fullmatch(value) or not 0 < float(value) <= MAX_HOLD_SECONDS:
                    return None
                got.hold = float(value)
            elif name == b"token":
                if not _TOKEN.fullmatch(value):
                    return None
                got.token = value.decode()
    authorization = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if authorization is not None:
                return None  # which one counts is FastAPI's to say
            authorization = value.decode("latin-1")
    got.bearer = bearer_of(authorization)
    return got


class PlainLongPoll(BaseRoute):
    """The long-poll route for plain requests, without the framework's work per request.

    Placed first among the app's routes; not an ``APIRoute``, so the OpenAPI document knows
    only the FastAPI route, which answers every request this one does not match.
    """

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        got = plain(scope)
        if got is None:
            return Match.NONE, {}
        return Match.FULL, {"path_params": {"job_id": got.job_id}, "reviewstream.plain": got}

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        raise NoMatchFound(name, path_params)  # its URLs are the FastAPI route's

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await answer(scope["reviewstream.plain"], scope, send)


async def answer(got: Plain, scope: Scope, send: Send) -> None:
    """A plain long poll's answer (``web/lanes.py`` calls this too). Domain errors go up."""
    service: ReviewService = scope["state"]["service"]
    caller = service.gate.principal(got.bearer, got.token)
    body = await service.long_poll(got.job_id, got.offset, got.limit, got.hold, caller)
    headers = [*_HEAD, (b"content-length", b"%d" % len(body)), _JSON]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
