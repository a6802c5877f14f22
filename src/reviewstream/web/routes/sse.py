"""Server-Sent Events: one open response per follower, resumable with Last-Event-ID."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request

from ...errors import ReviewstreamError, ServerDraining
from ...follow import Follower
from ...models import Batch, JobEnd, JobNotice, ReviewRequest
from ...observe.metrics import sent
from ...service import ReviewService
from ...tenancy import Principal
from ...wire import sse_error_event, sse_event, sse_preamble
from ..delivery import Operation, Route
from ..deps import CREATE_ERRORS, JOB_ERRORS, Caller, Service, json_errors
from ..event_stream import EventStreamResponse
from ..params import JOB_ID, LAST_EVENT_ID, START_OFFSET, Params

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


class Events:
    """A follower's batches and end as encoded SSE events, after the preamble.

    When this server drains, the stream just ends: EventSource reconnects by itself, with
    Last-Event-ID, and lands on another server. An iterator class, not an async generator:
    every open stream holds one for its life, and an async generator would also hold an entry
    in the event loop's registry of them. Another dialect over SSE (the UI message stream) is a
    subclass with its own ``encode`` and ``broke``: class attributes, nothing more per stream.
    """

    __slots__ = ("_follower", "_preamble", "_state")
    encode: Callable[[Batch | JobEnd | JobNotice], bytes] = staticmethod(sse_event)
    broke: Callable[[str], bytes] = staticmethod(sse_error_event)  # the stream's last words
    mode = "sse"  # what its deliveries count as (``observe.metrics.MODES``)

    def __init__(self, follower: Follower, preamble: bytes) -> None:
        self._follower = follower
        self._preamble = preamble
        self._state = "new"  # then "following", then "done"

    def __aiter__(self) -> Events:
        return self

    async def __anext__(self) -> bytes:
        if self._state == "new":
            self._state = "following"
            return self._preamble
        if self._state == "done" or self._follower.reached_end:
            raise StopAsyncIteration
        try:
            return self.encode(sent(self.mode, await self._follower.next()))
        except ServerDraining:
            self._state = "done"
            raise StopAsyncIteration from None
        except ReviewstreamError as e:
            self._state = "done"
            log.warning("event stream of %s broke: %s", self._follower.job_id, e)
            return self.broke(str(e))

    async def aclose(self) -> None:
        self._state = "done"


async def stream_response(
    service: ReviewService,
    job_id: str,
    offset: int,
    caller: Principal,
    events: Callable[[Follower], Events] | None = None,
) -> EventStreamResponse:
    """The job's stream from ``offset``: SSE events, or what ``events`` makes of the follower."""
    # The follower opens here, before the response starts, so an unknown job is a plain 404. The
    # response leaves it when it ends.
    following = service.follow(job_id, offset, caller)
    follower = await following.__aenter__()
    return EventStreamResponse(
        events(follower)
        if events is not None
        else Events(follower, sse_preamble(service.settings.sse_retry_ms)),
        heartbeat_seconds=service.settings.sse_heartbeat_seconds,
        closing=following,
    )


async def job_events(
    service: ReviewService, params: Params, caller: Principal
) -> EventStreamResponse:
    return await stream_response(service, params.job_id, params.start, caller)


ROUTE = Route(
    "job_events",
    "/jobs/{job_id}/events",
    (JOB_ID, START_OFFSET, LAST_EVENT_ID),
    endpoint=job_events,
    operation=Operation(
        summary="Job Events",
        description="SSE: `token` events (id = offset after them), then one `end` event.",
        tags=("delivery",),
        responses={**_SSE, **json_errors(JOB_ERRORS)},
    ),
    mode="sse",
    held=True,
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
