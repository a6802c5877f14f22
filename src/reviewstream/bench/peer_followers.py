"""Followers of a Durable Streams server (the peer of ``--peer durable-streams``).

They use what reviewstream's followers use — the same ``HttpConnection``, ``Poller`` and
``SseReader``, the same arrival stamps, the same ``Trace`` — and differ only in the protocol
(PROTOCOL.md of durable-streams/durable-streams, sections 5.7, 5.8, 8 and 10.1):

- **long poll**: ``GET {stream}?cursor=C&live=long-poll&offset=O`` (parameters in
  lexicographic order, as the protocol recommends). A ``200`` carries the messages since ``O``
  as a JSON array; a ``204`` says the wait timed out. Either way the next request starts at the
  ``Stream-Next-Offset`` header and echoes the ``Stream-Cursor`` header as ``cursor``;
  ``Stream-Closed: true`` is the end of the stream.
- **SSE**: ``GET {stream}?cursor=C&live=sse&offset=O``. ``event: data`` carries a JSON array of
  messages (possibly over several ``data:`` lines), and an ``event: control`` follows with
  ``streamNextOffset``, ``streamCursor``, ``upToDate`` and, at the end, ``streamClosed``. A
  connection the server closes before ``streamClosed`` is opened again from the last control
  event's offset and cursor, as the protocol requires of clients.

Offsets are opaque tokens minted by the server; a follower starts at ``-1`` (the beginning) and
only ever sends back what the server gave it.

The messages are the benchmark's own (``peer_runner`` appends them to an ``application/json``
stream): ``{"offset": i, "tokens": [token], "ts": [send time]}`` per token, then
``{"end": {"status": "done", "next_offset": n}}`` appended together with the stream's closure —
the shapes of reviewstream's token and end messages, so the same ``Trace`` checks them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any
from urllib.parse import quote

from .conn import Endpoint, HttpConnection
from .followers import Follow, FollowOptions, Poller, SseReader, Trace

STREAM_START = "-1"
# A server that keeps closing an SSE response before the stream's end is broken, not slow.
SSE_RECONNECTS = 20


def read_target(path: str, offset: str, cursor: str | None, live: str) -> str:
    """The request target of a live read from ``offset`` (parameters sorted by name)."""
    query = f"live={live}&offset={quote(offset, safe='')}"
    if cursor is not None:
        query = f"cursor={quote(cursor, safe='')}&{query}"
    return f"{path}?{query}"


def on_messages(trace: Trace, payload: bytes, now: float) -> None:
    """Hand a JSON array of the benchmark's messages to the trace."""
    messages = json.loads(payload)
    if not isinstance(messages, list):
        raise ValueError(f"expected a JSON array of messages, got {payload[:100]!r}")
    for message in messages:
        on_message(trace, message, now)


def on_message(trace: Trace, message: dict[str, Any], now: float) -> None:
    """One message: a token batch or the end."""
    end = message.get("end")
    if end is not None:
        trace.on_end(end["status"], end["next_offset"], now, end.get("error"))
    else:
        trace.on_tokens(message["offset"], message["tokens"], message["ts"], now)


def _closed_without_end(trace: Trace, now: float) -> None:
    if not trace.finished:
        trace.fail("the stream closed without the end message")
        trace.on_end("closed", trace.next_offset, now)


def _is_true(value: bytes | None) -> bool:
    return value is not None and value.lower() == b"true"


async def follow_long_poll(endpoint: Endpoint, trace: Trace, options: FollowOptions) -> None:
    """Long-poll the stream from its beginning to ``Stream-Closed``."""
    poller = Poller(endpoint, trace)
    offset, cursor = STREAM_START, None
    try:
        while True:
            response = await poller.fetch(read_target(trace.job.id, offset, cursor, "long-poll"))
            now, fields = response.complete_time, response.fields
            if response.status not in (200, 204):
                trace.fail(f"long poll answered {response.status}: {bytes(response.body)[:200]!r}")
                return
            next_offset = fields.get(b"stream-next-offset")
            if not next_offset:
                trace.fail(f"long poll answered {response.status} without Stream-Next-Offset")
                return
            if response.status == 200:
                on_messages(trace, bytes(response.body), now)
            offset = next_offset.decode()
            echoed = fields.get(b"stream-cursor")
            cursor = echoed.decode() if echoed is not None else cursor
            if _is_true(fields.get(b"stream-closed")):
                _closed_without_end(trace, now)
                return
    finally:
        poller.close()


class _ControlledSseReader(SseReader):
    """Durable Streams events: ``data`` messages to the trace, ``control`` to the position."""

    def __init__(self, trace: Trace, ended: asyncio.Future[None]) -> None:
        super().__init__(trace, ended)
        self.offset = STREAM_START
        self.cursor: str | None = None

    def start_at(self, offset: str, cursor: str | None) -> None:
        """A new connection: events follow from ``offset`` (a half-read event is dropped)."""
        self._buffer = b""
        self.offset, self.cursor = offset, cursor

    def on_event(self, event: str, data: list[bytes], now: float) -> None:
        if self.ended.done():
            return
        try:
            if event == "data":
                on_messages(self.trace, b"\n".join(data), now)
            elif event == "control":
                control = json.loads(b"\n".join(data))
                self.offset = str(control["streamNextOffset"])
                cursor = control.get("streamCursor")
                self.cursor = str(cursor) if cursor is not None else self.cursor
                if control.get("streamClosed") is True:
                    _closed_without_end(self.trace, now)
                    self.ended.set_result(None)
            elif data:
                self.trace.fail(f"unexpected SSE event {event!r}")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            # Raised here, it would fail the connection's data_received: stop the follower.
            self.trace.fail(f"bad SSE {event!r} event ({type(e).__name__}: {e})")
            self.ended.set_result(None)


async def follow_sse(endpoint: Endpoint, trace: Trace, options: FollowOptions) -> None:
    """Read the stream as SSE from its beginning to the control event with ``streamClosed``."""
    ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    reader = _ControlledSseReader(trace, ended)
    try:
        for _ in range(1 + SSE_RECONNECTS):
            if await _sse_connection(endpoint, trace, reader, ended):
                return
        trace.fail(f"SSE closed {1 + SSE_RECONNECTS} times before the stream's end")
    finally:
        if not ended.done():
            ended.cancel()


async def _sse_connection(
    endpoint: Endpoint, trace: Trace, reader: _ControlledSseReader, ended: asyncio.Future[None]
) -> bool:
    """One SSE response from the reader's position; True once the stream ended (or failed)."""
    started = time.time()
    conn = await HttpConnection.open(endpoint)
    reader.start_at(reader.offset, reader.cursor)
    try:
        response = conn.request(
            "GET",
            read_target(trace.job.id, reader.offset, reader.cursor, "sse"),
            headers={"Accept": "text/event-stream", "Cache-Control": "no-cache"},
            on_body=reader.feed,
        )
        trace.requests += 1
        status = await response.headers
        trace.mark_connected(started, conn.recv_time)
        if status != 200:
            trace.fail(f"SSE answered {status}")
            return True
        await asyncio.wait([ended, response.done], return_when=asyncio.FIRST_COMPLETED)
        if not ended.done():
            return False  # closed before the end: open again where the last control left off
        # Let the stream's last chunk arrive, so its bytes count.
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(asyncio.shield(response.done), 1.0)
        return True
    finally:
        conn.close()
        trace.bytes_in += conn.bytes_in
        trace.bytes_out += conn.bytes_out


FOLLOWERS: dict[str, Follow] = {
    "long_poll": follow_long_poll,
    "sse": follow_sse,
}
