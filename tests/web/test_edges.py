"""Hardened edges on a real uvicorn run with the app's server options: WebSocket Origin, frame
size and type, out-of-range offsets in every mode, CORS preflight, no tracebacks for client input
(uvicorn's records included: conftest's ``serve`` lets them reach caplog).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets

from reviewstream.settings import Settings
from reviewstream.web import create_app, server_options
from reviewstream.wire import CloseCode

from tests.support.servers import serve

REVIEW = {"employee_name": "Barbara Liskov", "employee_review_points": "Abstraction; CLU"}
TOO_FAR = 2**53 + 1


@pytest.fixture
async def edge(settings: Settings) -> AsyncIterator[tuple[str, str]]:
    """(base URL, a job id) on a server that allows one foreign origin."""
    s = settings.model_copy(
        update={
            "cors_origins": "https://app.example",
            "sim_tokens_per_second": 20.0,
            "worker_grace_seconds": 0.2,
        }
    )
    async with serve(create_app(s), **server_options(s)) as base:
        async with httpx.AsyncClient(base_url=base) as c:
            job = (await c.post("/jobs", json=REVIEW)).json()
        yield base, job["id"]


def ws(base: str, path: str) -> str:
    return f"ws{base[4:]}{path}"


async def closed_with(url: str, send: Any = None, **kw: Any) -> tuple[int, str]:
    async with websockets.connect(url, max_size=None, **kw) as sock:
        if send is not None:
            await sock.send(send)
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                await asyncio.wait_for(sock.recv(), 10)
    assert info.value.rcvd is not None
    return info.value.rcvd.code, info.value.rcvd.reason


async def test_websocket_from_a_foreign_origin_is_403(edge: tuple[str, str]) -> None:
    base, job_id = edge
    url = ws(base, f"/jobs/{job_id}/ws")
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(url, origin="https://evil.example"):  # type: ignore[arg-type]
            pass
    assert info.value.response.status_code == 403
    for allowed in ("https://app.example", base):
        async with websockets.connect(url, origin=allowed) as sock:  # type: ignore[arg-type]
            assert "tokens" in await asyncio.wait_for(sock.recv(), 10)


async def test_binary_and_oversized_frames_close_without_buffering_or_tracebacks(
    edge: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    base, job_id = edge
    url = ws(base, f"/jobs/{job_id}/ws")
    code, reason = await closed_with(url, b"\x00\x01")
    assert code == CloseCode.UNSUPPORTED_DATA and "binary" in reason
    # Each closes (1009) while the job's tokens are being sent: a token sent just after the
    # server's own close must end the socket quietly (test_server_close.py makes it certain).
    for _ in range(20):
        code, _ = await closed_with(url, "x" * 1_000_000)
        assert code == CloseCode.MESSAGE_TOO_BIG
    # Refused as it arrives: a frame announcing 1 GiB gets its 1009 after 1 KiB of it, so the
    # server never waits for (or keeps) the rest.
    async with websockets.connect(url) as sock:
        sock.transport.write(text_frame_header(1 << 30) + b"x" * 1024)
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                await asyncio.wait_for(sock.recv(), 10)
    assert info.value.rcvd is not None and info.value.rcvd.code == CloseCode.MESSAGE_TOO_BIG
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def text_frame_header(length: int) -> bytes:
    """A client's text frame header (FIN, masked, 64-bit length; a zero mask leaves bytes as is)."""
    return struct.pack("!BBQ", 0x81, 0x80 | 127, length) + bytes(4)


async def test_offsets_past_2_to_the_53_are_422_in_every_mode(edge: tuple[str, str]) -> None:
    base, job_id = edge
    async with httpx.AsyncClient(base_url=base) as c:
        for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/long-poll", f"/jobs/{job_id}/events"):
            r = await c.get(path, params={"offset": TOO_FAR})
            assert r.status_code == 422 and "offset" in r.json()["error"], path
            ok = await c.get(f"/jobs/{job_id}", params={"offset": 2**53})
            assert ok.status_code == 200
        r = await c.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": str(TOO_FAR)})
        assert r.status_code == 422
    code, reason = await closed_with(ws(base, f"/jobs/{job_id}/ws?offset={TOO_FAR}"))
    assert code == CloseCode.INVALID and "offset" in reason


async def test_cors_preflight_answers_listed_origins_only(edge: tuple[str, str]) -> None:
    base, _ = edge
    ask = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    async with httpx.AsyncClient(base_url=base) as c:
        ok = await c.options("/jobs", headers={"Origin": "https://app.example", **ask})
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        no = await c.options("/jobs", headers={"Origin": "https://evil.example", **ask})
        assert "access-control-allow-origin" not in no.headers


async def test_connections_past_the_process_cap_get_503(settings: Settings) -> None:
    s = settings.model_copy(update={"max_open_connections": 2, "sim_tokens_per_second": 5.0})
    s = s.model_copy(update={"worker_grace_seconds": 0.2})
    async with serve(create_app(s), **server_options(s)) as base:
        async with contextlib.AsyncExitStack() as idle:
            # Idle keep-alive connections are not counted: three of them, then two streams.
            for _ in range(3):
                client = await idle.enter_async_context(httpx.AsyncClient(base_url=base))
                assert (await client.get("/healthz")).status_code == 200
            async with httpx.AsyncClient(base_url=base) as c:
                job = (await c.post("/jobs", json=REVIEW)).json()
                url, job_ws = f"/jobs/{job['id']}/events", ws(base, f"/jobs/{job['id']}/ws")
                async with c.stream("GET", url), c.stream("GET", url):
                    refused = await c.get("/healthz")
                    assert refused.status_code == 503
                    assert refused.headers["content-type"] == "application/json"
                    assert int(refused.headers["retry-after"]) >= 1
                    body = refused.json()
                    assert "REVIEWSTREAM_MAX_OPEN_CONNECTIONS" in body["error"]
                    assert body["detail"] == {"limit": "REVIEWSTREAM_MAX_OPEN_CONNECTIONS"}
                    with pytest.raises(websockets.InvalidStatus) as info:
                        async with websockets.connect(job_ws):
                            pass
                    denied = info.value.response
                    assert denied.status_code == 503 and int(denied.headers["retry-after"]) >= 1
                    assert b"REVIEWSTREAM_MAX_OPEN_CONNECTIONS" in denied.body
                await served_again(c)
                # A WebSocket session counts as one.
                async with c.stream("GET", url), websockets.connect(job_ws):
                    assert (await c.get("/healthz")).status_code == 503
                await served_again(c)


async def served_again(c: httpx.AsyncClient) -> None:
    """The streams just closed: their slots free as soon as the server sees them end."""
    async with asyncio.timeout(5):
        while (await c.get("/healthz")).status_code != 200:
            await asyncio.sleep(0.05)
