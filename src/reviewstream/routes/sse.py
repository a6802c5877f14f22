"""Server-Sent Events: one open response per follower, resumable with Last-Event-ID."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Message, Send

from ..errors import ReviewstreamError
from ..follow import Follower
from ..hub import Batch
from ..models import ErrorBody, ReviewRequest
from ..wire import dumps, end_message, sse_token_event
from .deps import JobId, Service
from .jobs import _ERRORS

router = APIRouter(tags=["delivery"])
log = logging.getLogger(__name__)

_SSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "The event stream."}
}
LastEventId = Annotated[
    int | None,
    Header(ge=0, alias="Last-Event-ID", description="Resume after this offset (set by browsers)."),
]
QueryOffset = Annotated[
    int | None, Query(ge=0, description="Start offset when there is no Last-Event-ID.")
]


class LeanEventSourceResponse(EventSourceResponse):
    """sse-starlette's response, minus a cancel scope per event when there is no send timeout.

    ``anyio.move_on_after(None)`` still looks up the async backend on every event: 11-12 % of the
    server's CPU at 1,000 followers (benchmarks/README.md). Should the library rename the hook,
    this override simply goes unused.
    """

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        if self.send_timeout is None:
            await send(message)
        else:
            await super()._send_with_timeout(send, message)


async def events(
    follower: Follower, stack: contextlib.AsyncExitStack, retry_ms: int
) -> AsyncIterator[ServerSentEvent | bytes]:
    """Encode a follower's batches and end as SSE events; closes the follower when done."""
    try:
        yield ServerSentEvent(comment="reviewstream", retry=retry_ms)
        async for item in follower:
            if isinstance(item, Batch):
                yield sse_token_event(item)
            else:
                yield ServerSentEvent(dumps(end_message(item)), event="end")
    except ReviewstreamError as e:
        log.warning("SSE stream of %s broke: %s", follower.job_id, e)
        yield ServerSentEvent(dumps({"error": str(e)}), event="error")
    finally:
        await stack.aclose()


async def stream_response(service: Service, job_id: str, offset: int) -> EventSourceResponse:
    stack = contextlib.AsyncExitStack()
    try:
        follower = await stack.enter_async_context(service.follow(job_id, offset))
    except BaseException:
        await stack.aclose()
        raise
    return LeanEventSourceResponse(
        events(follower, stack, service.settings.sse_retry_ms),
        ping=service.settings.sse_heartbeat_seconds,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    responses={**_SSE, **_ERRORS},
)
async def job_events(
    job_id: JobId,
    service: Service,
    last_event_id: LastEventId = None,
    offset: QueryOffset = None,
) -> EventSourceResponse:
    """SSE: `token` events (id = offset after them), then one `end` event."""
    start = last_event_id if last_event_id is not None else (offset or 0)
    return await stream_response(service, job_id, start)


@router.post(
    "/generate",
    response_class=EventSourceResponse,
    responses={**_SSE, 422: {"model": ErrorBody}},
)
async def generate(body: ReviewRequest, request: Request, service: Service) -> EventSourceResponse:
    """The seed article's endpoint: start a review and stream it back as SSE at once."""
    job_id, _ = await service.create(body)
    response = await stream_response(service, job_id, 0)
    response.headers["X-Job-Id"] = job_id
    response.headers["Location"] = f"/jobs/{job_id}"
    return response
