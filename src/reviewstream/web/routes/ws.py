"""WebSocket: one socket per follower; the client may also cancel the job.

The handshake is checked before it is accepted: a foreign ``Origin`` is answered 403 and a
missing or bad credential 401 (as HTTP, where the server supports the denial response; else
close 4403/4401). After it, errors close the socket with ``4000 + status`` from the one table
(``handlers.close_code``): 4404 for an unknown job (or another key's), 4422 for a bad id or
offset, 4429 past the key's stream limit; 4400 for a bad message, 1003 for a binary frame, 1009
for one above ``REVIEWSTREAM_WS_MAX_MESSAGE_BYTES``, 1012 when the server drains.
"""

from __future__ import annotations

import contextlib
import json
import logging
from urllib.parse import urlsplit

from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from ...errors import JobFinished, ReviewstreamError, Unauthorized
from ...observe.metrics import refused, sent
from ...service import ReviewService
from ...tenancy import Principal
from ...wire import CloseCode, ws_message
from ..alongside import alongside
from ..delivery import Route
from ..handlers import AUTHENTICATE, close_code, error_response
from ..params import JOB_ID, OFFSET, credentials, read

log = logging.getLogger(__name__)


def origin_allowed(websocket: WebSocket, allowed: frozenset[str]) -> bool:
    """No Origin (not a browser), the service's own, or one of REVIEWSTREAM_CORS_ORIGINS."""
    origin = websocket.headers.get("origin")
    if origin is None or origin in allowed:
        return True
    return urlsplit(origin).netloc.lower() == websocket.headers.get("host", "").lower()


async def read_commands(
    websocket: WebSocket, service: ReviewService, job_id: str, caller: Principal
) -> None:
    """Client messages: only ``{"type": "cancel"}`` for now. A bad one closes the socket."""
    max_bytes = service.settings.ws_max_message_bytes
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        raw = message.get("text")
        if raw is None:
            raise _Close(CloseCode.UNSUPPORTED_DATA, "binary frames are not accepted: send JSON")
        if len(raw) > max_bytes:
            raise _Close(CloseCode.MESSAGE_TOO_BIG, f"messages are limited to {max_bytes} bytes")
        try:
            command = json.loads(raw)
        except ValueError:
            raise _Close(CloseCode.BAD_REQUEST, "message is not JSON") from None
        if not isinstance(command, dict) or command.get("type") != "cancel":
            raise _Close(CloseCode.BAD_REQUEST, 'unknown message: expected {"type": "cancel"}')
        with contextlib.suppress(JobFinished):
            await service.cancel(job_id, caller)


class _Close(Exception):
    """A bad client message: close with ``code``."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


async def _deny(websocket: WebSocket, status: int, message: str) -> None:
    """Refuse the handshake: HTTP ``status`` before the upgrade where the server can."""
    refused(status, "Unauthorized" if status == 401 else "Forbidden")
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        headers = AUTHENTICATE if status == 401 else None
        response: Response = error_response(status, message, headers=headers)
        await websocket.send_denial_response(response)
        return
    await websocket.accept()
    await _close(websocket, 4000 + status, message)


async def job_socket(scope: Scope, receive: Receive, send: Send) -> None:
    """WebSocket: `tokens` messages from `?offset=N`, then one `end`; send `cancel` to stop."""
    websocket = WebSocket(scope, receive=receive, send=send)
    service: ReviewService = scope["state"]["service"]
    if not origin_allowed(websocket, frozenset(service.settings.cors_origin_list)):
        await _deny(websocket, 403, "this origin may not open a WebSocket here")
        return
    try:
        caller = scope["reviewstream.caller"] = service.gate.principal(*credentials(scope))
    except Unauthorized as e:
        await _deny(websocket, 401, str(e))
        return
    await websocket.accept()
    try:
        params = read(scope, ROUTE.takes, scope["path_params"]["job_id"])
        async with (
            service.follow(params.job_id, params.offset, caller) as follower,
            # The reader ends the sending when the client leaves or sends a bad message.
            alongside(read_commands(websocket, service, params.job_id, caller)),
        ):
            # Not in a function of its own: an open socket holds every frame it is suspended
            # in for its life.
            while not follower.reached_end:
                await websocket.send_text(ws_message(sent("websocket", await follower.next())))
        await websocket.close(CloseCode.END_OF_JOB, "end of job")
    except WebSocketDisconnect:
        pass
    except _Close as e:
        await _close(websocket, e.code, e.reason)
    except ReviewstreamError as e:
        await _close(websocket, close_code(e), str(e))


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.close(code, reason[:120])


ROUTE = Route(
    "job_socket",
    "/jobs/{job_id}/ws",
    (JOB_ID, OFFSET),
    socket=job_socket,
    mode="websocket",
    held=True,
)
