"""Durable Streams reads: every job is a stream at ``/v1/stream/jobs/{job_id}``, and streams
written by others (``durable_writes``) are read the same way at ``/v1/stream/{path}``.

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

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope

from ...errors import InvalidInput, JobNotFound, ReviewstreamError, ServerDraining
from ...follow import Follower
from ...holds import Holds
from ...models import Batch, JobEnd, JobStatus
from ...observe import metrics as observe
from ...observe.metrics import sent
from ...service import ReviewService
from ...store import Snapshot, StreamMeta, stream_id
from ...streams import offsets, wire
from ...streams.wire import JOB_SHAPE, Shape
from ...tenancy import Principal
from ..delivery import Route
from ..event_stream import EventStreamResponse
from ..handlers import error_answer
from ..params import JOB_ID, StreamRead, stream_read
from . import durable_openapi as doc

log = logging.getLogger(__name__)

MODE = "durable_streams"  # what its reads count as (``observe.metrics.MODES``)
JOB_STREAM = "/v1/stream/jobs/{job_id}"
CATCH_UP_TOKENS = 10000  # a finished review is read whole in one catch-up GET
CATCH_UP_CHUNKS = 64  # an outside stream's appends are up to REVIEWSTREAM_MAX_APPEND_BYTES each
DEFAULT_HOLD_SECONDS = 10.0  # a long poll's hold, capped by REVIEWSTREAM_LONG_POLL_MAX_TIMEOUT
# An SSE read ends after about this long, between events, so that new readers collapse onto
# edge requests (PROTOCOL 10.2: "approximately every 60 seconds", a fixed figure, not a knob);
# its client reconnects from the last control event's streamNextOffset.
SSE_CLOSE_SECONDS = 60.0
_CATCH_UP_CACHE = "private, max-age=60, stale-while-revalidate=300"


def answer(exc: ReviewstreamError, request: str) -> ASGIApp:
    """A domain error in the protocol's words: a malformed parameter is a 400 (our own modes
    say 422); the body is our one error shape, with the dialect's security headers."""
    response = error_answer(exc, request)
    if isinstance(exc, InvalidInput):
        response.status_code = 400
    response.headers.update(wire.SECURITY_HEADERS)
    return response


@dataclass(frozen=True, slots=True)
class Target:
    """The stream a request reads: its id in the store, how its chunks become bytes, and
    whether it is a job's (whose closure says how the job ended) or an outside one's (whose
    meta gives its shape, TTL and expiry)."""

    sid: str
    shape: Shape
    meta: StreamMeta | None = None

    @property
    def job(self) -> bool:
        return self.meta is None

    def page(self, settings_page: int) -> int:
        """Chunks per list read: the setting's for a job's tokens, fewer for an outside
        stream's (each a whole append)."""
        return settings_page if self.job else min(settings_page, CATCH_UP_CHUNKS)

    def ending(self, snapshot: Snapshot | JobEnd) -> dict[str, str]:
        """The headers of an answer that reaches the stream's closure; a job's say how it
        ended (extension headers)."""
        if not self.job:
            return {wire.CLOSED: "true"}
        status = snapshot.status
        headers = {wire.CLOSED: "true", wire.JOB_STATUS: status.value}
        if status is not JobStatus.DONE and snapshot.error:
            headers[wire.JOB_ERROR] = snapshot.error.encode("ascii", "replace").decode()[:200]
        return headers


def job_target(scope: Scope) -> Target:
    try:
        return Target(str(JOB_ID.parse(scope["path_params"]["job_id"])), JOB_SHAPE)
    except InvalidInput:
        raise JobNotFound(scope["path_params"]["job_id"][:64]) from None


async def outside_target(service: ReviewService, scope: Scope, *, touch: bool) -> Target:
    """An outside stream by its path (``touch``: a read, which restarts a sliding TTL)."""
    sid = stream_id(scope["path_params"]["path"])
    meta = await service.store.streams.meta(sid, touch=touch)
    return Target(sid, Shape(meta.content_type, "latin-1"), meta)


def _headers(shape: Shape, **more: str) -> dict[str, str]:
    return {"Content-Type": shape.content_type, **wire.SECURITY_HEADERS, **more}


async def head_job(
    service: ReviewService, scope: Scope, receive: Receive, caller: Principal
) -> ASGIApp:
    return await head(service, job_target(scope), caller)


async def head_outside(
    service: ReviewService, scope: Scope, receive: Receive, caller: Principal
) -> ASGIApp:
    return await head(service, await outside_target(service, scope, touch=False), caller)


async def head(service: ReviewService, target: Target, caller: Principal) -> ASGIApp:
    snap = await service.read(target.sid, None, 0, caller)
    headers = _headers(target.shape, **{wire.NEXT_OFFSET: offsets.encode(snap.count)})
    headers["Cache-Control"] = "no-store"
    if snap.status.terminal:
        headers |= target.ending(snap)
    if target.meta is not None:
        if target.meta.ttl:
            headers[wire.TTL] = target.meta.ttl
        if target.meta.expires_at:
            headers[wire.EXPIRES_AT] = target.meta.expires_at
    if target.job:
        headers[wire.PRODUCER_EPOCH] = str(snap.attempts)
    headers["ETag"] = wire.etag(target.sid, 0, snap.count, snap.status.terminal)
    return Response(status_code=200, headers=headers)


async def read_job(
    service: ReviewService, scope: Scope, receive: Receive, caller: Principal
) -> ASGIApp:
    return await read(service, job_target(scope), stream_read(scope), caller)


async def read_outside(
    service: ReviewService, scope: Scope, receive: Receive, caller: Principal
) -> ASGIApp:
    request = stream_read(scope)
    return await read(service, await outside_target(service, scope, touch=True), request, caller)


async def read(
    service: ReviewService, target: Target, request: StreamRead, caller: Principal
) -> ASGIApp:
    if request.live == "sse":
        return await sse(service, target, request, caller)
    catch_up_limit = CATCH_UP_TOKENS if target.job else CATCH_UP_CHUNKS
    limit = catch_up_limit if request.live is None else target.page(service.settings.page_size)
    snap = await service.read(target.sid, request.offset, limit, caller)
    if request.live is None:
        return catch_up(target, snap, request)
    return await long_poll(service, target, snap, request, caller)


def catch_up(
    target: Target, snap: Snapshot, request: StreamRead, *, live: bool = False
) -> Response:
    """What is stored from the offset on: 200, with the headers a reader resumes by."""
    shape = target.shape
    up_to_date = snap.next_offset >= snap.count
    closed = snap.status.terminal and up_to_date
    headers = _headers(shape, **{wire.NEXT_OFFSET: offsets.encode(snap.next_offset)})
    if up_to_date:
        headers[wire.UP_TO_DATE] = "true"
    if closed:
        headers |= target.ending(snap)
    if live:
        headers[wire.CURSOR] = wire.cursor(request.cursor)
    if target.job and snap.attempts:
        headers[wire.PRODUCER_EPOCH] = str(snap.attempts)
    if request.offset is None and not live:  # `now`: the tail, never cached, no ETag (PROTOCOL 8)
        headers["Cache-Control"] = "no-store"
        return Response(wire.body(shape, []), 200, headers)
    etag = wire.etag(target.sid, snap.offset, snap.next_offset, closed)
    headers["ETag"] = etag
    headers["Cache-Control"] = _CATCH_UP_CACHE if snap.tokens else "no-store"
    if request.if_none_match == etag:
        return Response(status_code=304, headers={"ETag": etag, **wire.SECURITY_HEADERS})
    if snap.tokens:
        observe.tally(MODE).delivered(snap.tokens, snap.ts)
    return Response(wire.body(shape, snap.tokens), 200, headers)


def _caught_up(
    target: Target, snap: Snapshot | JobEnd | None, offset: int, cursor: str | None
) -> Response:
    """204: nothing new at ``offset``; with the closure when the stream ended there."""
    headers = {
        wire.NEXT_OFFSET: offsets.encode(offset),
        wire.UP_TO_DATE: "true",
        **wire.SECURITY_HEADERS,
        "Cache-Control": "no-store",
    }
    if snap is not None:
        headers |= target.ending(snap)
    else:
        headers[wire.CURSOR] = cursor or ""
    return Response(status_code=204, headers=headers)


async def long_poll(
    service: ReviewService, target: Target, snap: Snapshot, request: StreamRead, caller: Principal
) -> Response:
    """Stored tokens at once; else the next ones, the end, or 204 after the hold."""
    offset = snap.offset
    if snap.tokens:
        return catch_up(target, snap, request, live=True)
    if snap.status.terminal and offset >= snap.count:
        return _caught_up(target, snap, snap.count, None)
    settings = service.settings
    hold = min(request.hold or DEFAULT_HOLD_SECONDS, settings.long_poll_max_timeout)
    cursor = wire.cursor(request.cursor)
    page = target.page(service.settings.page_size)
    async with service.follow(target.sid, offset, caller, page_size=page) as follower:
        try:
            async with service.holds.hold(hold):
                while True:
                    item = await follower.next()
                    if isinstance(item, Batch):
                        break
                    if isinstance(item, JobEnd):
                        return _caught_up(target, item, item.next_offset, None)
        except (TimeoutError, ServerDraining):
            return _caught_up(target, None, offset, cursor)
    fresh = Snapshot(
        job_id=target.sid,
        status=JobStatus.RUNNING,
        offset=item.offset,
        tokens=item.tokens,
        ts=item.ts,
        count=item.next_offset,  # live: nothing stored past what was just announced
        error=None,
        usage=None,
        attempts=follower.attempts,  # the producer epoch that wrote them, as heard here
    )
    return catch_up(target, fresh, request, live=True)


async def sse(
    service: ReviewService, target: Target, request: StreamRead, caller: Principal
) -> EventStreamResponse:
    # The first read finds the end for `now` and answers an unknown job 404 before the stream
    # starts; the follower opens here too, so the response only has to leave it.
    snap = await service.read(target.sid, request.offset, 0, caller)
    page = target.page(service.settings.page_size)
    following = service.follow(target.sid, snap.offset, caller, page_size=page)
    follower = await following.__aenter__()
    response = EventStreamResponse(
        StreamEvents(
            follower,
            target,
            snap,
            request.cursor,
            page,
            holds=service.holds,
            close_after=SSE_CLOSE_SECONDS,
        ),
        heartbeat_seconds=service.settings.sse_heartbeat_seconds,
        closing=following,
    )
    # The protocol's exact media type (the other SSE routes name their charset).
    # and asks caches to revalidate, besides never storing it.
    response.raw_headers = [
        h for h in response.raw_headers if h[0] not in (b"content-type", b"cache-control")
    ]
    response.raw_headers.append((b"content-type", b"text/event-stream"))
    response.raw_headers.append((b"cache-control", b"no-store, no-cache"))
    response.raw_headers.extend(
        (name.lower().encode(), value.encode())
        for name, value in wire.SECURITY_HEADERS.items()
        if name != "X-Content-Type-Options"  # the response's own headers carry it
    )
    if not target.shape.text:
        response.raw_headers.append((wire.SSE_ENCODING.encode(), b"base64"))
    if target.job and snap.attempts:
        # The epoch at the start; a later one is told in band (``producerEpoch``).
        response.raw_headers.append((b"producer-epoch", str(snap.attempts).encode()))
    return response


class StreamEvents:
    """A follower's batches as ``data`` events, each followed by a ``control`` event; the end
    as a closing control event, after which the stream ends. A stream that starts caught up
    says so at once (``upToDate``)."""

    __slots__ = (
        "_cursor",
        "_deadline",
        "_first",
        "_follower",
        "_holds",
        "_job",
        "_page",
        "_state",
        "_text",
    )

    def __init__(
        self,
        follower: Follower,
        target: Target,
        first: Snapshot,
        cursor: str | None,
        page: int,
        *,
        holds: Holds,
        close_after: float,
    ) -> None:
        self._follower = follower
        self._job = target.job
        self._text = wire.SseText(target.shape)
        self._first = first
        self._cursor = cursor
        self._page = page
        self._state = "new"  # then "following", then "done"
        # Then the stream ends, between events (on the loop's clock). Each wait for the next
        # event is a hold (``holds``) to that deadline: a set insertion under the timer its
        # tick shares, not a timer per event.
        self._holds = holds
        self._deadline = asyncio.get_running_loop().time() + close_after

    def __aiter__(self) -> StreamEvents:
        return self

    def _control(self, offset: int, *, up_to_date: bool, end: JobEnd | Snapshot | None) -> bytes:
        extra: dict[str, Any] | None = None
        if end is not None and self._job:
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
        follower, loop = self._follower, asyncio.get_running_loop()
        while True:
            now = loop.time()
            if now >= self._deadline:
                self._state = "done"  # time to close: the client resumes from its last offset
                raise StopAsyncIteration
            try:
                async with self._holds.hold(self._deadline - now):
                    item = sent(MODE, await follower.next())
            except TimeoutError:
                continue  # closes above
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
            if item.status is JobStatus.RUNNING and item.attempt > 1:
                # A continued attempt: a new producer epoch, after the text already stored.
                extra = {"producerEpoch": item.attempt}
                fields = wire.control(
                    follower.offset,
                    cursor=wire.cursor(self._cursor),
                    up_to_date=False,
                    closed=False,
                    extra=extra,
                )
                return wire.control_event(fields, follower.offset)
            # an attempt lost (the job queued again): nothing to tell until the next begins

    async def aclose(self) -> None:
        self._state = "done"


JOB_ROUTES = (
    Route("durable_stream", JOB_STREAM, (), operation=doc.JOB_READ, exchange=read_job,
          answer=answer, mode=MODE),
    Route("durable_stream_head", JOB_STREAM, (), operation=doc.JOB_HEAD, exchange=head_job,
          answer=answer, method="HEAD"),
)  # fmt: skip
OUTSIDE_STREAM = "/v1/stream/{path:path}"
READ_ROUTES = (
    Route("stream_read", OUTSIDE_STREAM, (), operation=doc.STREAM_READ, exchange=read_outside,
          answer=answer, mode=MODE),
    Route("stream_head", OUTSIDE_STREAM, (), operation=doc.STREAM_HEAD, exchange=head_outside,
          answer=answer, method="HEAD"),
)  # fmt: skip
