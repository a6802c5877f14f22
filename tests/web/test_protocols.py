"""uvicorn's protocols as the app runs them (``web/protocols.py``).

``OneWriteHttp``: a response of known length leaves in one socket write, byte for byte what
uvicorn's own httptools protocol sends in two; streamed responses still send their head first.
Each case runs the same app and request bytes through both protocols on a transport that
records its writes (the protocols' only way out), and compares. ``LeanWebSocket``'s inbox and
flag behave as the asyncio classes they replace; the WebSocket tests that run with
``server_options`` (test_edges, test_server_close, test_proxy, test_auth) exercise it whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from reviewstream.settings import Settings
from reviewstream.web import server_options
from reviewstream.web.protocols import Flag, Inbox, LeanWebSocket, OneWriteHttp

GET = b"GET /%s HTTP/1.1\r\nHost: t\r\n\r\n"


class Recorded:
    """A transport that keeps what is written to it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5000)}.get(name, default)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def set_protocol(self, protocol: Any) -> None: ...


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    kind = scope["path"].strip("/")
    if kind == "stream":

        async def parts() -> AsyncIterator[bytes]:
            yield b"first"
            await asyncio.sleep(0)
            yield b"second"

        await StreamingResponse(parts(), media_type="text/plain")(scope, receive, send)
    elif kind == "close":
        await Response(b"bye", headers={"Connection": "close"})(scope, receive, send)
    elif kind == "empty":
        await Response(status_code=204)(scope, receive, send)
    elif kind == "late":  # an await between the head and the body
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]}
        )
        await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"late"})
    else:
        await Response(b'{"tokens":["a"]}', media_type="application/json")(scope, receive, send)


async def exchange(protocol_class: type[HttpToolsProtocol], request: bytes) -> Recorded:
    config = Config(app, http=protocol_class, lifespan="off", log_level="warning")
    config.load()
    state = ServerState()
    protocol = protocol_class(config=config, server_state=state, app_state={})
    transport = Recorded()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(request)
    for _ in range(100):  # the requests' tasks, pipelined ones one after the other
        await asyncio.sleep(0.005)
        if not state.tasks and not protocol.pipeline:
            break
    if protocol.timeout_keep_alive_task is not None:
        protocol.timeout_keep_alive_task.cancel()
    return transport


@pytest.mark.parametrize(
    ("request_bytes", "one_write_count"),
    [
        (GET % b"page", 1),
        (GET % b"close", 1),
        (GET % b"empty", 2),  # no Content-Length: as uvicorn writes it (head, then b"")
        (GET % b"late", 1),
        (GET % b"page" + GET % b"close", 2),  # pipelined: one write each
        (b"HEAD /page HTTP/1.1\r\nHost: t\r\n\r\n", 1),
    ],
    ids=["page", "connection-close", "204", "await-between", "pipelined", "HEAD"],
)
async def test_a_response_of_known_length_is_one_write_of_the_same_bytes(
    request_bytes: bytes, one_write_count: int
) -> None:
    uvicorns = await exchange(HttpToolsProtocol, request_bytes)
    ours = await exchange(OneWriteHttp, request_bytes)
    assert b"".join(ours.writes) == b"".join(uvicorns.writes)
    assert len(ours.writes) == one_write_count
    assert ours.writes[0].startswith(b"HTTP/1.1 ")
    assert ours.closed == uvicorns.closed


async def test_a_streamed_response_still_sends_its_head_first() -> None:
    uvicorns = await exchange(HttpToolsProtocol, GET % b"stream")
    ours = await exchange(OneWriteHttp, GET % b"stream")
    assert ours.writes == uvicorns.writes
    assert ours.writes[0].endswith(b"\r\n\r\n") and b"transfer-encoding: chunked" in ours.writes[0]
    assert len(ours.writes) >= 3  # head, chunks, end


async def test_the_lean_websockets_inbox_and_flag_behave_as_asyncio_s() -> None:
    inbox: Inbox[int] = Inbox()
    assert inbox.empty()
    first, second = asyncio.create_task(inbox.get()), asyncio.create_task(inbox.get())
    cancelled = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert sorted(await asyncio.gather(first, second)) == [1, 2]  # two waiters, both served
    assert cancelled.cancelled() and inbox.empty()
    inbox.put_nowait(3)
    assert not inbox.empty() and await inbox.get() == 3
    flag = Flag()
    waiting = asyncio.create_task(flag.wait())
    await asyncio.sleep(0.01)
    assert not waiting.done() and not flag.is_set()
    flag.set()
    await asyncio.wait_for(waiting, 1)
    flag.clear()
    assert not flag.is_set()


async def test_a_server_with_the_app_s_options_uses_the_lean_protocols() -> None:
    options = server_options(Settings(_env_file=None))  # type: ignore[call-arg]
    assert options["http"] is OneWriteHttp and options["ws"] is LeanWebSocket
    config = Config(app, **options, lifespan="off")
    config.load()
    protocol = LeanWebSocket(config=config, server_state=ServerState(), app_state={})
    assert isinstance(protocol.queue, Inbox) and isinstance(protocol.writable, Flag)
    assert protocol.writable.is_set()  # as uvicorn leaves its Event
