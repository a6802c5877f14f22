"""WebSocket: one socket per follower; the client may also cancel the job."""

from __future__ import annotations

import contextlib
import json
import logging

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from ..alongside import alongside
from ..errors import JobFinished, JobNotFound, ReviewstreamError, ServerDraining
from ..follow import Follower
from ..hub import Batch
from ..service import ReviewService
from ..wire import dumps, end_message, ws_tokens_message
from .deps import get_service

router = APIRouter(tags=["delivery"])
log = logging.getLogger(__name__)

# Application close codes (4000-4999): the HTTP status they stand for, plus 4000.
CLOSE_BAD_REQUEST = 4400
CLOSE_NOT_FOUND = 4404
CLOSE_INVALID = 4422
CLOSE_UNAVAILABLE = 4503
CLOSE_RESTARTING = 1012  # RFC 6455 "service restart": reconnect, resume from the offset


def parse_offset(raw: str | None) -> int:
    if raw is None:
        return 0
    if not raw.isdigit():
        raise ValueError(f"offset must be a non-negative integer, got {raw[:40]!r}")
    return int(raw)


async def send_tokens(websocket: WebSocket, follower: Follower) -> None:
    async for item in follower:
        if isinstance(item, Batch):
            await websocket.send_text(ws_tokens_message(item))
        else:
            await websocket.send_text(dumps({"type": "end", **end_message(item)}))


async def read_commands(websocket: WebSocket, service: ReviewService, job_id: str) -> None:
    """Client messages: only ``{"type": "cancel"}`` for now. A bad one closes the socket."""
    while True:
        raw = await websocket.receive_text()
        try:
            message = json.loads(raw)
        except ValueError:
            raise _Close(CLOSE_BAD_REQUEST, "message is not JSON") from None
        if not isinstance(message, dict) or message.get("type") != "cancel":
            raise _Close(CLOSE_BAD_REQUEST, 'unknown message: expected {"type": "cancel"}')
        with contextlib.suppress(JobFinished):
            await service.cancel(job_id)


class _Close(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@router.websocket("/jobs/{job_id}/ws")
async def job_socket(websocket: WebSocket, job_id: str) -> None:
    """WebSocket: `tokens` messages from `?offset=N`, then one `end`; send `cancel` to stop."""
    service = await get_service(websocket)
    await websocket.accept()
    try:
        offset = parse_offset(websocket.query_params.get("offset"))
        async with (
            service.follow(job_id, offset) as follower,
            # The reader ends the sending when the client leaves or sends a bad message.
            alongside(read_commands(websocket, service, job_id)),
        ):
            await send_tokens(websocket, follower)
        await websocket.close(1000, "end of job")
    except WebSocketDisconnect:
        pass
    except ValueError as e:
        await _close(websocket, CLOSE_INVALID, str(e))
    except JobNotFound as e:
        await _close(websocket, CLOSE_NOT_FOUND, str(e))
    except _Close as e:
        await _close(websocket, e.code, e.reason)
    except ServerDraining as e:
        await _close(websocket, CLOSE_RESTARTING, str(e))
    except ReviewstreamError as e:
        await _close(websocket, CLOSE_UNAVAILABLE, str(e))


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.close(code, reason[:120])
