"""WebSocket: one socket per follower; the client may also cancel the job.

The handshake is checked before it is accepted: a foreign ``Origin`` is answered 403 and a
missing or bad credential 401 (as HTTP, where the server supports the denial response; else
close 4403/4401). After it: 4404 for an unknown job (or another key's), 4422 for a bad id or
offset, 4400 for a bad message, 1003 for a binary frame, 1009 for one above
``REVIEWSTREAM_WS_MAX_MESSAGE_BYTES``, 4429 past the key's stream limit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Awaitable
from urllib.parse import urlsplit

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.responses import Response
from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send

from ...errors import (
    Forbidden,
    JobFinished,
    JobNotFound,
    QuotaExceeded,
    ReviewstreamError,
    ServerDraining,
    Unauthorized,
)
from ...service import ReviewService
from ...tenancy import Principal
from ...wire import CloseCode, ws_message
from ..alongside import alongside
from ..deps import JOB_ID_PATTERN, MAX_OFFSET, caller_of, get_service
from ..handlers import AUTHENTICATE, error_response

router = APIRouter(tags=["delivery"])
log = logging.getLogger(__name__)

_JOB_ID = re.compile(JOB_ID_PATTERN)


def parse_offset(raw: str | None) -> int:
    if raw is None:
        return 0
    if not raw.isdigit() or len(raw) > 17 or int(raw) > MAX_OFFSET:
        raise ValueError(f"offset must be an integer from 0 to 2^53, got {raw[:40]!r}")
    return int(raw)


def check_job_id(job_id: str) -> None:
    if not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"job id must match {JOB_ID_PATTERN}, got {job_id[:40]!r}")


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
    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


async def _deny(websocket: WebSocket, status: int, message: str) -> None:
    """Refuse the handshake: HTTP ``status`` before the upgrade where the server can."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        headers = AUTHENTICATE if status == 401 else None
        response: Response = error_response(status, message, headers=headers)
        await websocket.send_denial_response(response)
        return
    await websocket.accept()
    await _close(websocket, CloseCode(4000 + status), message)


async def job_socket(websocket: WebSocket) -> None:
    """WebSocket: `tokens` messages from `?offset=N`, then one `end`; send `cancel` to stop."""
    job_id: str = websocket.path_params["job_id"]
    service = await get_service(websocket)
    if not origin_allowed(websocket, frozenset(service.settings.cors_origin_list)):
        await _deny(websocket, 403, "this origin may not open a WebSocket here")
        return
    try:
        caller = caller_of(websocket, service)
    except Unauthorized as e:
        await _deny(websocket, 401, str(e))
        return
    await websocket.accept()
    try:
        check_job_id(job_id)
        offset = parse_offset(websocket.query_params.get("offset"))
        async with (
            service.follow(job_id, offset, caller) as follower,
            # The reader ends the sending when the client leaves or sends a bad message.
            alongside(read_commands(websocket, service, job_id, caller)),
        ):
            # Here, not in a function of its own: every open socket holds each frame it is in.
            while not follower.reached_end:  # not `async for`: one async generator less per socket
                await websocket.send_text(ws_message(await follower.next()))
        await websocket.close(CloseCode.END_OF_JOB, "end of job")
    except WebSocketDisconnect:
        pass
    except ValueError as e:
        await _close(websocket, CloseCode.INVALID, str(e))
    except JobNotFound as e:
        await _close(websocket, CloseCode.NOT_FOUND, str(e))
    except _Close as e:
        await _close(websocket, e.code, e.reason)
    except ServerDraining as e:
        await _close(websocket, CloseCode.SERVICE_RESTART, str(e))
    except QuotaExceeded as e:
        await _close(websocket, CloseCode.TOO_MANY, str(e))
    except Forbidden as e:
        await _close(websocket, CloseCode.FORBIDDEN, str(e))
    except ReviewstreamError as e:
        await _close(websocket, CloseCode.UNAVAILABLE, str(e))


class JobSocket:
    """The route's ASGI app, a plain one: what every open socket holds for its life is counted.

    FastAPI's route would add two AsyncExitStacks and its dependency solving, and Starlette's
    ``websocket_session`` a layer of exception handlers that the app's own ExceptionMiddleware
    already is, to each socket (~5.7 KB in all, benchmarks/README.md), for nothing this handler
    uses. Not ``async def``: it hands back the handler's coroutine, so no frame of its own stays
    suspended under it.
    """

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        return job_socket(WebSocket(scope, receive=receive, send=send))


router.routes.append(WebSocketRoute("/jobs/{job_id}/ws", JobSocket(), name="job_socket"))


async def _close(websocket: WebSocket, code: CloseCode, reason: str) -> None:
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.close(code, reason[:120])
