"""Durable Streams: every job is a stream readable at ``/v1/stream/jobs/{job_id}``.

Catch-up ``GET``, ``HEAD``, ``live=long-poll`` and ``live=sse`` as the protocol specifies, over
the same service, follower and ownership check as every other mode (a job's stream token reads
it as ``Bearer`` or ``?token=``). Offsets are ``streams.offsets``: the job's token offset N,
16 digits. The body is the review's text (``text/plain; charset=utf-8``). A job that ended is
a closed stream; how it ended is the extension header ``Stream-Job-Status`` (``done``,
``failed``, ``cancelled``; ``Stream-Job-Error`` names a failure) on the answer that reaches
its end, and ``jobStatus`` / ``jobError`` in the closing SSE control event. Errors are answered
in the protocol's statuses (400 for a malformed offset, 404, 405 for writes to a job).
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope

from ...errors import InvalidInput, JobNotFound, ReviewstreamError, ServerDraining
from ...follow import Follower
from ...models import Batch, JobEnd, JobStatus
from ...service import ReviewService
from ...store import Snapshot
from ...streams import offsets, wire
from ...streams.wire import JOB_SHAPE, Shape
from ...tenancy import Principal
from ..delivery import Route
from ..event_stream import EventStreamResponse
from ..handlers import error_answer
from ..params import JOB_ID, StreamRead, stream_read

log = logging.getLogger(__name__)

JOB_STREAM = "/v1/stream/jobs/{job_id}"
CATCH_UP_TOKENS = 10000  # a finished review is read whole in one catch-up GET
DEFAULT_HOLD_SECONDS = 10.0  # a long poll's hold, capped by REVIEWSTREAM_LONG_POLL_MAX_TIMEOUT
_CATCH_UP_CACHE = "private, max-age=60, stale-while-revalidate=300"


def answer(exc: ReviewstreamError, request: str) -> ASGIApp:
    """A domain error in the protocol's words: a malformed parameter is a 400 (our own modes
    say 422); the body is our one error shape, with the dialect's security headers."""
    response = error_answer(exc, request)
    if isinstance(exc, InvalidInput):
        response.status_code = 400
    response.headers.update(wire.SECURITY_HEADERS)
    return response


def job_id_of(scope: Scope) -> str:
    try:
        return str(JOB_ID.parse(scope["path_params"]["job_id"]))
    except InvalidInput:
        raise JobNotFound(scope["path_params"]["job_id"][:64]) from None


def ending(snapshot: Snapshot | JobEnd) -> dict[str, str]:
    """The extension headers that say how a job's stream closed."""
    status = snapshot.status
    headers = {wire.CLOSED: "true", wire.JOB_STATUS: status.value}
    if status is not JobStatus.DONE and snapshot.error:
        headers[wire.JOB_ERROR] = snapshot.error.encode("ascii", "replace").decode()[:200]
    return headers


def _headers(shape: Shape, **more: str) -> dict[str, str]:
    return {"Content-Type": shape.content_type, **wire.SECURITY_HEADERS, **more}


async def head_job(
    service: ReviewService, scope: Scope, receive: Receive, caller: Principal
) -> ASGIApp:
    job_id = job_id_of(scope)
    snap = await service.read(job_id, None, 0, caller)
    headers = _headers(JOB_SHAPE, **{wire.NEXT_OFFSET: offsets.encode(snap.count)})
    headers["Cache-Control"] = "no-store"
    if snap.status.terminal:
        headers |= ending(snap)
    headers["ETag"] = wire.etag(job_id, 0, snap.count, snap.status.terminal)
    return Response(status_code=200, headers=headers)


async def read_job(
    service: ReviewService, scope: Scope, receive: Receive, caller: Principal
) -> ASGIApp:
    job_id = job_id_of(scope)
    request = stream_read(scope)
    if request.live == "sse":
        return await sse(service, job_id, request, caller)
    limit = CATCH_UP_TOKENS if request.live is None else service.settings.page_size
    snap = await service.read(job_id, request.offset, limit, caller)
    if request.live is None:
        return catch_up(job_id, snap, request)
    return await long_poll(service, job_id, snap, request, caller)


def catch_up(job_id: str, snap: Snapshot, request: StreamRead, *, live: bool = False) -> Response:
    """What is stored from the offset on: 200, with the headers a reader resumes by."""
    up_to_date = snap.next_offset >= snap.count
    closed = snap.status.terminal and up_to_date
    headers = _headers(JOB_SHAPE, **{wire.NEXT_OFFSET: offsets.encode(snap.next_offset)})
    if up_to_date:
        headers[wire.UP_TO_DATE] = "true"
    if closed:
        headers |= ending(snap)
    if live:
        headers[wire.CURSOR] = wire.cursor(request.cursor)
    if request.offset is None and not live:  # `now`: the tail, never cached, no ETag (PROTOCOL 8)
        headers["Cache-Control"] = "no-store"
        return Response(wire.body(JOB_SHAPE, []), 200, headers)
    etag = wire.etag(job_id, snap.offset, snap.next_offset, closed)
    headers["ETag"] = etag
    headers["Cache-Control"] = _CATCH_UP_CACHE if snap.tokens else "no-store"
    if request.if_none_match == etag:
        return Response(status_code=304, headers={"ETag": etag, **wire.SECURITY_HEADERS})
    return Response(wire.body(JOB_SHAPE, snap.tokens), 200, headers)


def _caught_up(snap: Snapshot | JobEnd | None, offset: int, cursor: str | None) -> Response:
    """204: nothing new at ``offset``; with the closure when the stream ended there."""
    headers = {
        wire.NEXT_OFFSET: offsets.encode(offset),
        wire.UP_TO_DATE: "true",
        **wire.SECURITY_HEADERS,
        "Cache-Control": "no-store",
    }
    if snap is not None:
        headers |= ending(snap)
    else:
        headers[wire.CURSOR] = cursor or ""
    return Response(status_code=204, headers=headers)


async def long_poll(
    service: ReviewService, job_id: str, snap: Snapshot, request: StreamRead, caller: Principal
) -> Response:
    """Stored tokens at once; else the next ones, the end, or 204 after the hold."""
    offset = snap.offset
    if snap.tokens:
        return catch_up(job_id, snap, request, live=True)
    if snap.status.terminal and offset >= snap.count:
        return _caught_up(snap, snap.count, None)
    settings = service.settings
    hold = min(request.hold or DEFAULT_HOLD_SECONDS, settings.long_poll_max_timeout)
    cursor = wire.cursor(request.cursor)
    async with service.follow(job_id, offset, caller) as follower:
        try:
            async with service.holds.hold(hold):
                while True:
                    item = await follower.next()
                    if isinstance(item, Batch):
                        break
                    if isinstance(item, JobEnd):
                        return _caught_up(item, item.next_offset, None)
        except (TimeoutError, ServerDraining):
            return _caught_up(None, offset, cursor)
    page = Snapshot(
        job_id=job_id,
        status=JobStatus.RUNNING,
        offset=item.offset,
        tokens=item.tokens,
        ts=item.ts,
        count=item.next_offset,  # live: nothing stored past what was just announced
        error=None,
        usage=None,
    )
    return catch_up(job_id, page, request, live=True)


async def sse(
    service: ReviewService, job_id: str, request: StreamRead, caller: Principal
) -> EventStreamResponse:
    # The first read finds the end for `now` and answers an unknown job 404 before the stream
    # starts; the follower opens here too, so the response only has to leave it.
    snap = await service.read(job_id, request.offset, 0, caller)
    following = service.follow(job_id, snap.offset, caller)
    follower = await following.__aenter__()
    response = EventStreamResponse(
        StreamEvents(follower, JOB_SHAPE, snap, request.cursor, service.settings.page_size),
        heartbeat_seconds=service.settings.sse_heartbeat_seconds,
        closing=following,
    )
    response.raw_headers.extend(
        (name.lower().encode(), value.encode())
        for name, value in wire.SECURITY_HEADERS.items()
        if name != "X-Content-Type-Options"  # the response's own headers carry it
    )
    if not JOB_SHAPE.text:
        response.raw_headers.append((wire.SSE_ENCODING.encode(), b"base64"))
    return response


class StreamEvents:
    """A follower's batches as ``data`` events, each followed by a ``control`` event; the end
    as a closing control event, after which the stream ends. A stream that starts caught up
    says so at once (``upToDate``)."""

    __slots__ = ("_cursor", "_first", "_follower", "_page", "_state", "_text")

    def __init__(
        self, follower: Follower, shape: Shape, first: Snapshot, cursor: str | None, page: int
    ) -> None:
        self._follower = follower
        self._text = wire.SseText(shape)
        self._first = first
        self._cursor = cursor
        self._page = page
        self._state = "new"  # then "following", then "done"

    def __aiter__(self) -> StreamEvents:
        return self

    def _control(self, offset: int, *, up_to_date: bool, end: JobEnd | Snapshot | None) -> bytes:
        extra: dict[str, Any] | None = None
        if end is not None:
            extra = {"jobStatus": end.status.value}
            if end.error and end.status is not JobStatus.DONE:
                extra["jobError"] = end.error
        fields = wire.control(
            offset,
            cursor=wire.cursor(self._cursor),
            up_to_date=up_to_date,
            closed=end is not None,
            extra=extra,
        )
        return wire.control_event(fields, offset)

    async def __anext__(self) -> bytes:
        if self._state == "done":
            raise StopAsyncIteration
        if self._state == "new":
            self._state = "following"
            first = self._first
            if first.offset >= first.count:
                if first.status.terminal:
                    self._state = "done"
                    return self._control(first.count, up_to_date=True, end=first)
                return self._control(first.offset, up_to_date=True, end=None)
        follower = self._follower
        while True:
            try:
                item = await follower.next()
            except ServerDraining:
                self._state = "done"
                raise StopAsyncIteration from None
            except ReviewstreamError as e:
                self._state = "done"
                log.warning("Durable Streams SSE of %s broke: %s", follower.job_id, e)
                raise StopAsyncIteration from None
            if isinstance(item, JobEnd):
                self._state = "done"
                return self._control(item.next_offset, up_to_date=True, end=item)
            if isinstance(item, Batch):
                data = wire.data_event(self._text.payload(item.tokens))
                end = follower.known_end
                if end is not None and item.next_offset >= end.next_offset:
                    self._state = "done"
                    return data + self._control(item.next_offset, up_to_date=True, end=end)
                up_to_date = len(item.tokens) < self._page
                return data + self._control(item.next_offset, up_to_date=up_to_date, end=None)
            # a notice (an attempt lost or begun): nothing for this dialect to say yet

    async def aclose(self) -> None:
        self._state = "done"


JOB_ROUTES = (
    Route("durable_stream", JOB_STREAM, (), exchange=read_job, answer=answer),
    Route("durable_stream_head", JOB_STREAM, (), exchange=head_job, answer=answer, method="HEAD"),
)
