"""A send into a WebSocket that uvicorn closed by itself is a disconnect, never a traceback.

Deterministic: the probe route sends in the very step it hears of uvicorn's own 1009 close,
before uvicorn has seen the connection go. That is the window the WebSocket route's sender
lands in when a token wakes it in the same loop turn as an oversized frame, before its reader
has cancelled it (and where the end-of-job close lands when the job ends in that turn).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest
import websockets
from fastapi import WebSocket, WebSocketDisconnect

from reviewstream.settings import Settings
from reviewstream.web import create_app, server_options
from reviewstream.wire import CloseCode

from tests.support.servers import serve

LATE_SENDS: dict[str, Callable[[WebSocket], Awaitable[None]]] = {
    "tokens": lambda websocket: websocket.send_text('{"type": "tokens"}'),
    "end-of-job close": lambda websocket: websocket.close(CloseCode.END_OF_JOB, "end of job"),
}


@pytest.mark.parametrize("late", list(LATE_SENDS))
async def test_a_send_after_the_server_closed_for_a_big_frame_is_a_disconnect(
    settings: Settings, caplog: pytest.LogCaptureFixture, late: str
) -> None:
    app = create_app(settings)
    heard: list[str] = []

    @app.websocket("/probe")
    async def probe(websocket: WebSocket) -> None:
        await websocket.accept()
        message = await websocket.receive()  # uvicorn's own close: the frame was too big
        heard.append(f"{message['type']} {message.get('code')}")
        try:
            await LATE_SENDS[late](websocket)  # no await in between: still in the window
        except WebSocketDisconnect as e:
            heard.append(f"WebSocketDisconnect {e.code}")
        except Exception as e:
            heard.append(repr(e))
            raise

    async with serve(app, **server_options(settings)) as base:
        async with websockets.connect(f"ws{base[4:]}/probe", max_size=None) as sock:
            await sock.send("x" * (settings.ws_max_message_bytes + 1))
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(sock.recv(), 10)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == CloseCode.MESSAGE_TOO_BIG
        async with asyncio.timeout(5):
            while len(heard) < 2:
                await asyncio.sleep(0.01)
    assert heard == ["websocket.disconnect 1009", "WebSocketDisconnect 1006"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
