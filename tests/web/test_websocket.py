"""WebSocket on a real uvicorn: errors close with a 4xxx code and a reason, cancel over the
socket, and the coalescing window's fewer, bigger messages."""

from __future__ import annotations

import json

import httpx
import pytest
import websockets
from websockets.frames import Close

from reviewstream.settings import Settings
from reviewstream.web import create_app
from reviewstream.wire import CloseCode

from tests.support.live import new_job, stored, tuned
from tests.support.servers import serve


async def close_frame(url: str, send: str | None = None) -> Close:
    """Connect, send ``send`` if given, read until the server closes; its close frame."""
    async with websockets.connect(url) as ws:
        if send is not None:
            await ws.send(send)
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                await ws.recv()
    assert info.value.rcvd is not None, url
    return info.value.rcvd


async def test_websocket_errors_close_with_4xxx_and_reason(
    server: tuple[str, httpx.AsyncClient],
) -> None:
    base, c = server
    ws_base = base.replace("http", "ws")
    job_id = await new_job(c, length_words=1500)
    cases = [
        ("/jobs/unknown-job/ws", None, CloseCode.NOT_FOUND, "not found"),
        (f"/jobs/{job_id}/ws?offset=-1", None, CloseCode.INVALID, "offset"),
        (f"/jobs/{job_id}/ws", "not json", CloseCode.BAD_REQUEST, "JSON"),
        (
            f"/jobs/{job_id}/ws",
            json.dumps({"type": "dance"}),
            CloseCode.BAD_REQUEST,
            "unknown message",
        ),
    ]
    for path, send, code, reason in cases:
        closed = await close_frame(ws_base + path, send)
        assert closed.code == code and reason in closed.reason, path
    await c.delete(f"/jobs/{job_id}")


@pytest.mark.parametrize(
    ("job_id", "named"),
    [("bad%20id!", "'bad id!'"), ("x" * 65, "'" + "x" * 40)],
    ids=["chars", "65"],
)
async def test_websocket_invalid_job_id_closes_invalid_naming_it(
    server: tuple[str, httpx.AsyncClient], job_id: str, named: str
) -> None:
    """Checked like the HTTP routes' job id, before any Redis read: INVALID, not NOT_FOUND."""
    base, _ = server
    closed = await close_frame(base.replace("http", "ws") + f"/jobs/{job_id}/ws")
    assert closed.code == CloseCode.INVALID
    assert "job id" in closed.reason and named in closed.reason, closed.reason


async def test_websocket_cancel_ends_job_cancelled(settings: Settings) -> None:
    slow = tuned(settings, sim_tokens_per_second=50)
    async with serve(create_app(slow)) as base, httpx.AsyncClient(base_url=base) as c:
        job_id = await new_job(c)
        url = base.replace("http", "ws") + f"/jobs/{job_id}/ws"
        tokens: list[str] = []
        async with websockets.connect(url) as ws:
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] == "tokens":
                    tokens += message["tokens"]
                    if len(tokens) >= 3:
                        await ws.send(json.dumps({"type": "cancel"}))
                else:
                    end = message
                    break
        assert end["status"] == "cancelled" and end["next_offset"] == len(tokens)
        assert (await stored(c, job_id)) == tokens


async def test_coalescing_window_batches_tokens_per_message(settings: Settings) -> None:
    coalesced = tuned(settings, sim_tokens_per_second=400, coalesce_ms=60)
    async with serve(create_app(coalesced)) as base, httpx.AsyncClient(base_url=base) as c:
        job_id = await new_job(c)
        messages = 0
        tokens: list[str] = []
        async with websockets.connect(base.replace("http", "ws") + f"/jobs/{job_id}/ws") as ws:
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] != "tokens":
                    break
                messages += 1
                tokens += message["tokens"]
        assert tokens == await stored(c, job_id)
        assert messages < len(tokens) / 4, (messages, len(tokens))
