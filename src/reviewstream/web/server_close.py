"""A send on a WebSocket the server closed by itself is a disconnect, not an application error.

uvicorn closes a WebSocket on its own when a frame is larger than ``ws_max_size`` (1009, as
the frame's header arrives) or a keepalive ping goes unanswered (1011). It marks the socket
closed at once, but learns that the connection is gone only when the transport says so, a loop
turn later at the soonest (later still while its write buffer drains). In between it answers
the application's ``websocket.send`` or ``websocket.close`` with ``RuntimeError("Unexpected
ASGI message …, after sending 'websocket.close'")`` instead of the ``OSError`` the ASGI spec
asks for on a closed connection, and which it raises itself once the connection is lost.
Starlette turns an ``OSError`` into ``WebSocketDisconnect``; a ``RuntimeError`` goes up as a
crash of the application, logged with its traceback.

The WebSocket route sends in the handler's task while a reader task watches the client
(``alongside``). The reader hears of such a close from the disconnect event the server queues,
and then cancels the sending; but the sender, woken by a token in the same loop turn, can run
first and send into that window. After a keepalive timeout nothing is queued at all. No
ordering of the two tasks closes the window, so the answer is put right where it enters the
app: a send refused with ``RuntimeError`` on a socket this app accepted and has not closed
can only mean that the server closed it, and becomes ``ServerClosedSocket``, an ``OSError``.
Anything else (a send before the accept, or after the app's own close) still goes up as the
bug it is. The close code the client gets is the server's (1009, 1011).

One guard per WebSocket session, on its send path (``GuardedSend``, a slotted object: no
closure and no frame held for the session's life): a call and two flag checks per message.
HTTP requests and streams pass untouched. ``ServerCloseIsDisconnect`` puts it on every WebSocket
that reaches the app's routes; ``web/delivery.py`` puts it on the delivery routes' sockets.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ServerClosedSocket(OSError):
    """The server had already closed this WebSocket by itself when the app sent to it."""


class GuardedSend:
    """A WebSocket's send: refused with ``RuntimeError`` because the server closed the socket,
    it raises ``ServerClosedSocket`` (an OSError) instead."""

    __slots__ = ("accepted", "closed_by_app", "send")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.accepted = False
        self.closed_by_app = False

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        into_open_socket = self.accepted and not self.closed_by_app
        if kind == "websocket.accept":
            self.accepted = True
        elif kind == "websocket.close":
            self.closed_by_app = True
        try:
            await self.send(message)
        except RuntimeError as e:
            if into_open_socket and kind in ("websocket.send", "websocket.close"):
                raise ServerClosedSocket(f"the server had closed the WebSocket: {e}") from e
            raise


class ServerCloseIsDisconnect:
    """Pure ASGI: a WebSocket send refused because the server closed the socket is an OSError."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            send = GuardedSend(send)
        await self.app(scope, receive, send)
