"""A lean Server-Sent Events response: the request's task streams, one helper task listens.

sse-starlette's ``EventSourceResponse`` runs four tasks in an anyio task group per stream
(events, pings, a shutdown watch, a disconnect watch) and a cancel scope per event; a service
holding thousands of open streams pays that per follower (benchmarks/README.md has the figures).
Here the request's own task sends the events, and one helper task per stream (``alongside``)
waits for the client to go (which ends the sending) and sends a heartbeat comment every
``heartbeat_seconds``. Shutdown reaches a stream through its events: the hub drains every feed,
and the events simply end. Events are encoded by the caller (sse-starlette's
``ServerSentEvent``, in ``reviewstream.wire``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from .alongside import alongside
from .deps import PRIVATE_HEADERS

_HEARTBEAT: Message = {"type": "http.response.body", "body": b": ping\r\n\r\n", "more_body": True}
_LAST: Message = {"type": "http.response.body", "body": b"", "more_body": False}
# Every stream's headers, encoded once: Response.init_headers would encode them per response.
# No Content-Length (there is no body attribute); proxies must not buffer or cache it.
_HEADERS = (
    *(
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in {**PRIVATE_HEADERS, "X-Accel-Buffering": "no"}.items()
    ),
    (b"content-type", b"text/event-stream; charset=utf-8"),
)


class Events(Protocol):
    """Encoded events, then the end of the stream; ``aclose`` when the response ends early."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class EventStreamResponse(Response):
    """``text/event-stream`` from an async generator of encoded events."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: Events,
        *,
        heartbeat_seconds: float,
        closing: AbstractAsyncContextManager[object] | None = None,
        status_code: int = 200,  # FastAPI's OpenAPI reads the default from here
    ) -> None:
        self.events = events
        self.heartbeat_seconds = heartbeat_seconds
        self.status_code = status_code
        self.background = None
        self.raw_headers = list(_HEADERS)  # a list of its own: routes may add headers
        self.closing = closing  # left when the response ends, however it ends
        self.client_left = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One frame for the whole stream (no helper coroutine): every open stream holds its frames.
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async with alongside(self._listen(receive, send)):
                async for event in self.events:
                    await send({"type": "http.response.body", "body": event, "more_body": True})
            # The listener has stopped: no heartbeat after the last message.
            if not self.client_left:
                await send(_LAST)
        finally:
            try:
                await self.events.aclose()
            finally:
                if self.closing is not None:
                    await self.closing.__aexit__(None, None, None)

    async def _listen(self, receive: Receive, send: Send) -> None:
        """Heartbeats while the client stays; returns (ending the stream) when it leaves."""
        while True:
            try:
                async with asyncio.timeout(self.heartbeat_seconds):
                    message = await receive()
            except TimeoutError:
                await send(_HEARTBEAT)
                continue
            if message["type"] == "http.disconnect":
                self.client_left = True
                return
