"""Server-Sent Events: one open response per follower, resumable with Last-Event-ID."""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.routing import APIRoute
from starlette.datastructures import QueryParams
from starlette.types import Receive, Scope, Send

from ...errors import ReviewstreamError, ServerDraining
from ...follow import Follower
from ...models import ReviewRequest
from ...tenancy import Principal
from ...wire import sse_error_event, sse_event, sse_preamble
from ..deps import (
    CREATE_ERRORS,
    JOB_ERRORS,
    JOB_ID_PATTERN,
    MAX_OFFSET,
    Caller,
    JobId,
    Service,
    get_service,
    json_errors,
)
from ..event_stream import EventStreamResponse

router = APIRouter(tags=["delivery"])
log = logging.getLogger(__name__)

# One event of the stream (a comment and the `retry` hint open it; they carry no data). An Open
# API 3.1 `schema` of an event stream describes each event, as schemathesis reads it.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["token", "end", "error"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "token: {offset, tokens, ts}; end: the end record; error: {error}.",
        },
        "id": {
            "type": "string",
            "pattern": "^[0-9]+$",
            "description": "The offset after a token event.",
        },
        "retry": {"type": "integer"},
    },
}
_SSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
        "description": "The event stream.",
    }
}
LastEventId = Annotated[
    int | None,
    Header(
        ge=0,
        le=MAX_OFFSET,
        alias="Last-Event-ID",
        description="Resume after this offset (set by browsers).",
    ),
]
QueryOffset = Annotated[
    int | None,
    Query(ge=0, le=MAX_OFFSET, description="Start offset when there is no Last-Event-ID."),
]


class Events:
    """A follower's batches and end as encoded SSE events, after the preamble.

    When this server drains, the stream just ends: EventSource reconnects by itself, with
    Last-Event-ID, and lands on another server. An iterator class, not an async generator:
    every open stream holds one, and an async generator also costs an entry in the event loop's
    registry of them (~0.4 KB per stream in all; benchmarks/README.md).
    """

    __slots__ = ("_follower", "_retry_ms", "_state")

    def __init__(self, follower: Follower, retry_ms: int) -> None:
        self._follower = follower
        self._retry_ms = retry_ms
        self._state = "new"  # then "following", then "done"

    def __aiter__(self) -> Events:
        return self

    async def __anext__(self) -> bytes:
        if self._state == "new":
            self._state = "following"
            return sse_preamble(self._retry_ms)
        if self._state == "done" or self._follower.reached_end:
            raise StopAsyncIteration
        try:
            return sse_event(await self._follower.next())
        except ServerDraining:
            self._state = "done"
            raise StopAsyncIteration from None
        except ReviewstreamError as e:
            self._state = "done"
            log.warning("SSE stream of %s broke: %s", self._follower.job_id, e)
            return sse_error_event(str(e))

    async def aclose(self) -> None:
        self._state = "done"


async def stream_response(
    service: Service, job_id: str, offset: int, caller: Principal
) -> EventStreamResponse:
    # The follower opens here, before the response starts, so an unknown job is a plain 404. The
    # response leaves it when it ends (held as is: an AsyncExitStack per stream costs ~1 KB).
    following = service.follow(job_id, offset, caller)
    follower = await following.__aenter__()
    return EventStreamResponse(
        Events(follower, service.settings.sse_retry_ms),
        heartbeat_seconds=service.settings.sse_heartbeat_seconds,
        closing=following,
    )


async def job_events(
    job_id: JobId,
    service: Service,
    caller: Caller,
    last_event_id: LastEventId = None,
    offset: QueryOffset = None,
) -> EventStreamResponse:
    """SSE: `token` events (id = offset after them), then one `end` event."""
    start = last_event_id if last_event_id is not None else (offset or 0)
    return await stream_response(service, job_id, start, caller)


_JOB_ID = re.compile(JOB_ID_PATTERN)
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] ([!-~]+)")  # one space, then visible ASCII


def _offset(text: str) -> int | None:
    """A plain decimal offset (what FastAPI reads as the same integer), else None."""
    if text.isascii() and text.isdigit() and len(text) <= 16 and int(text) <= MAX_OFFSET:
        return int(text)
    return None


def plain_parameters(scope: Scope) -> tuple[str, int, str | None, str | None] | None:
    """``job_events``'s parameters, when FastAPI would read them the same: (job id, start,
    bearer, token); None for anything else (another method, a bad or unusual parameter)."""
    job_id = scope["path_params"]["job_id"]
    if scope["method"] != "GET" or not _JOB_ID.fullmatch(job_id):
        return None
    last_event_id: int | None = None
    bearer: str | None = None
    for name, raw in scope["headers"]:
        if name == b"last-event-id":
            if last_event_id is not None:
                return None  # twice
            last_event_id = _offset(raw.decode("latin-1"))
            if last_event_id is None:
                return None
        elif name == b"authorization":
            match = _BEARER.fullmatch(raw.decode("latin-1"))
            if bearer is not None or match is None:
                return None
            bearer = match[1]
    query = QueryParams(scope["query_string"])
    offsets, tokens = query.getlist("offset"), query.getlist("token")
    if len(offsets) > 1 or len(tokens) > 1:
        return None
    offset = _offset(offsets[0]) if offsets else 0
    if offset is None:
        return None
    start = last_event_id if last_event_id is not None else offset
    return job_id, start, bearer, (tokens[0] if tokens else None) or None


async def plain_response(scope: Scope) -> EventStreamResponse | None:
    """``job_events``'s answer without FastAPI's request handling, or None (let FastAPI)."""
    parameters = plain_parameters(scope)
    if parameters is None:
        return None
    job_id, start, bearer, token = parameters
    service = await get_service(Request(scope))
    # Errors go up to the app's handlers, the very ones FastAPI's route would call.
    caller = service.gate.principal(bearer, token)
    return await stream_response(service, job_id, start, caller)


class EventsRoute(APIRoute):
    """``GET /jobs/{job_id}/events``, answered without FastAPI's request handling when it adds
    nothing: an open stream holds whatever its request built for as long as it lasts, and
    FastAPI's adds a Request, two AsyncExitStacks and a layer of exception handlers to each
    (~5.6 KB of ~31; benchmarks/README.md, "Idle memory per connection").

    A request whose parameters are plain (a valid job id; at most one decimal Last-Event-ID,
    ``offset`` and ``token``; no Authorization, or one ``Bearer <key>``) is answered with the
    endpoint's own calls; any other goes to FastAPI as before, so every validation answer stays
    FastAPI's own. The OpenAPI document comes from the endpoint, unchanged.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await plain_response(scope)
        if response is None:
            await super().handle(scope, receive, send)
        else:
            await response(scope, receive, send)


router.add_api_route(
    "/jobs/{job_id}/events",
    job_events,
    methods=["GET"],
    response_class=EventStreamResponse,
    responses={**_SSE, **json_errors(JOB_ERRORS)},
    route_class_override=EventsRoute,
)


@router.post(
    "/generate",
    response_class=EventStreamResponse,
    responses={**_SSE, **json_errors(CREATE_ERRORS)},
)
async def generate(
    body: ReviewRequest, request: Request, service: Service, caller: Caller
) -> EventStreamResponse:
    """The seed article's endpoint: start a review and stream it back as SSE at once.

    The job's id is in `X-Job-Id` and `Location`, its stream token (with API keys) in
    `X-Stream-Token`.
    """
    job_id, _ = await service.create(body, caller)
    response = await stream_response(service, job_id, 0, caller)
    response.headers["X-Job-Id"] = job_id
    response.headers["Location"] = f"/jobs/{job_id}"
    token = service.stream_token(job_id, caller)
    if token is not None:
        response.headers["X-Stream-Token"] = token
    return response
