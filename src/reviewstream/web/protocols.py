"""uvicorn's protocols, trimmed for this app: ``server_options`` selects both.

``OneWriteHttp``: a response of known length in one socket write. uvicorn writes a response's
head when the app sends ``http.response.start`` and its body when the app sends
``http.response.body``: two writes, so two ``send`` system calls and two TCP segments that the
client reads apart, for every answer. A long poll is an answer per delivered batch, and those
writes are the largest single item in its profile (benchmarks/README.md, "Long poll: where the
time goes"; one system call less is a few µs of ~200, within the noise of what was measured).
``OneWriteHttp`` keeps the head of a response that declares its ``Content-Length``
until the first body message and writes both at once. A streamed response (chunked: SSE) and an
answer to ``HEAD`` write their head at once, as before. Everything else, parsing, validation of
the headers, keep-alive, flow control, is uvicorn's own code. uvicorn has no hook for the class
of its request cycle, so the protocol gives each cycle this class just before its task starts
(``_start_asgi_task``); the cycle's attributes are uvicorn's.

``LeanWebSocket``: uvicorn's websockets-sansio protocol (which refuses a frame above
``ws_max_size`` from its header, 1009) holding less per idle socket. Its inbox of received
messages was an ``asyncio.Queue`` (four deques, ~3.3 KB) and its ``writable`` flag an
``asyncio.Event`` (a deque, ~0.9 KB): here a list with its waiters, and a flag with its waiters,
made only while someone waits (benchmarks/README.md, "Idle memory per connection"). uvicorn's
code uses ``put_nowait``, ``get`` and ``empty`` of the one, ``set``, ``clear`` and ``wait`` of the
other.
"""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar

from uvicorn._types import ASGI3Application, ASGISendEvent
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

T = TypeVar("T")


class _Capture:
    """Stands for the transport while uvicorn writes a head: keeps the bytes instead."""

    __slots__ = ("data", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.transport.close()


class _HeadFirst:
    """Stands for the transport while uvicorn writes a body: the held head goes with it."""

    __slots__ = ("head", "transport")

    def __init__(self, transport: asyncio.Transport, head: bytes) -> None:
        self.transport = transport
        self.head: bytes | None = head

    def write(self, data: bytes) -> None:
        if self.head is None:
            self.transport.write(data)
            return
        self.transport.write(self.head + data)
        self.head = None

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.transport.close()


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's request cycle, holding the head of a response of known length for its body."""

    held: bytes | None = None  # a class default: cycles get this class after their __init__

    async def send(self, message: ASGISendEvent) -> None:
        held = self.held
        if held is not None:
            self.held = None
            await self._send_through(_HeadFirst(self.transport, held), message)
            return
        if message["type"] != "http.response.start" or self.response_started:
            await super().send(message)
            return
        transport = self.transport
        capture = _Capture(transport)
        await self._send_through(capture, message)
        head = bytes(capture.data)
        if self.chunked_encoding is False and self.scope["method"] != "HEAD":
            self.held = head  # written with the first body message
        elif head:
            transport.write(head)

    async def _send_through(self, stand_in: _Capture | _HeadFirst, message: ASGISendEvent) -> None:
        transport = self.transport
        self.transport = stand_in  # type: ignore[assignment]  # write, close, is_closing
        try:
            await super().send(message)
        finally:
            self.transport = transport


class OneWriteHttp(HttpToolsProtocol):
    """``HttpToolsProtocol`` whose responses of known length leave in one write."""

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        cycle.__class__ = OneWriteCycle
        super()._start_asgi_task(cycle, app)


class _Waiters:
    """Futures of the tasks waiting on something, made only while one waits."""

    __slots__ = ("_futures",)

    def __init__(self) -> None:
        self._futures: list[asyncio.Future[None]] | None = None

    async def wait(self) -> None:
        future = asyncio.get_running_loop().create_future()
        if self._futures is None:
            self._futures = []
        futures = self._futures
        futures.append(future)
        try:
            await future
        finally:
            futures.remove(future)
            if not futures and self._futures is futures:
                self._futures = None

    def wake(self) -> None:
        for future in self._futures or ():
            if not future.done():
                future.set_result(None)


class Inbox(Generic[T]):
    """What ``asyncio.Queue`` does for uvicorn's protocol (unbounded): ``put_nowait``, ``get``,
    ``empty``."""

    __slots__ = ("_items", "_waiters")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._waiters = _Waiters()

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        self._waiters.wake()

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> T:
        while not self._items:
            await self._waiters.wait()
        return self._items.pop(0)


class Flag:
    """What ``asyncio.Event`` does for uvicorn's protocol: ``set``, ``clear``, ``wait``."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters = _Waiters()

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        self._waiters.wake()

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        while not self._set:
            await self._waiters.wait()


class LeanWebSocket(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol with a lighter inbox and ``writable`` flag."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.queue = Inbox()  # type: ignore[assignment]
        writable = Flag()
        if self.writable.is_set():
            writable.set()
        self.writable = writable  # type: ignore[assignment]
