"""WebSocket: one socket per follower; the client may also cancel the job."""

from __future__ import annotations

import contextlib
import json
import logging
import re

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from ...errors import JobFinished, JobNotFound, ReviewstreamError, ServerDraining
from ...follow import Follower
from ...models import Batch
from ...service import ReviewService
from ...wire import CloseCode, ws_end_message, ws_tokens_message
from ..alongside import alongside
from ..deps import JOB_ID_PATTERN, get_service

router = APIRouter(tags=["delivery"])
log = logging.getLogger(__name__)

_JOB_ID = re.compile(JOB_ID_PATTERN)


def parse_offset(raw: str | None) -> int:
    if raw is None:
        return 0
    if not raw.isdigit():
        raise ValueError(f"offset must be a non-negative integer, got {raw[:40]!r}")
    return int(raw)


def check_job_id(job_id: str) -> None:
    if not _JOB_ID.match(job_id):
        raise ValueError(f"job id must match {JOB_ID_PATTERN}, got {job_id[:40]!r}")


async def send_tokens(websocket: WebSocket, follower: Follower) -> None:
    async for item in follower:
        if isinstance(item, Batch):
            await websocket.send_text(ws_tokens_message(item))
        else:
            await websocket.send_text(ws_end_message(item))


async def read_commands(websocket: WebSocket, service: ReviewService, job_id: str) -> None:
    """Client messages: only ``{"type": "cancel"}`` for now. A bad one closes the socket."""
    while True:
        raw = await websocket.receive_text()
        try:
            message = json.loads(raw)
        except ValueError:
            raise _Close(CloseCode.BAD_REQUEST, "message is not JSON") from None
        if not isinstance(message, dict) or message.get("type") != "cancel":
            raise _Close(CloseCode.BAD_REQUEST, 'unknown message: expected {"type": "cancel"}')
        with contextlib.suppress(JobFinished):
            await service.cancel(job_id)


class _Close(Exception):
    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@router.websocket("/jobs/{job_id}/ws")
async def job_socket(websocket: WebSocket, job_id: str) -> None:
    """WebSocket: `tokens` messages from `?offset=N`, then one `end`; send `cancel` to stop."""
    service = await get_service(websocket)
    await websocket.accept()
    try:
        check_job_id(job_id)
        offset = parse_offset(websocket.query_params.get("offset"))
        async with (
            service.follow(job_id, offset) as follower,
            # The reader ends the sending when the client leaves or sends a bad message.
            alongside(read_commands(websocket, service, job_id)),
        ):
            await send_tokens(websocket, follower)
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
    except ReviewstreamError as e:
        await _close(websocket, CloseCode.UNAVAILABLE, str(e))


async def _close(websocket: WebSocket, code: CloseCode, reason: str) -> None:
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.close(code, reason[:120])
