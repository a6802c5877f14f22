"""uvicorn's WebSocket protocol, trimmed for this app: ``server_options`` selects it.

``LeanWebSocket``: uvicorn's websockets-sansio protocol (which refuses a frame above
``ws_max_size`` from its header, 1009) holding less per idle socket. Its inbox of received
messages was an ``asyncio.Queue`` and its ``writable`` flag an ``asyncio.Event``, each holding
deques for the socket's life: here a list with its waiters, and a flag with its waiters, made
only while someone waits (benchmarks/README.md, "Idle memory per connection"). uvicorn's
code uses ``put_nowait``, ``get`` and ``empty`` of the one, ``set``, ``clear`` and ``wait`` of the
other.
"""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar

from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

T = TypeVar("T")


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
