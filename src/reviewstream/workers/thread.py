"""A worker in a thread of the API's process, on an event loop of its own."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from ..processes.loops import loop_factory
from .worker import Worker

log = logging.getLogger(__name__)


class WorkerThread:
    """A ``Worker`` in a thread of this process, on an event loop of its own.

    The thread opens the worker (``open_worker``: its own Redis pool, hub and providers' HTTP
    client) on its loop (redis-py and httpx objects belong to the loop that made them).
    ``start()`` returns once the worker announced itself; ``begin_shutdown()`` may be called
    from the API's loop; ``aclose()`` waits, without blocking the caller's loop, until the
    worker handed its jobs over and the thread ended.
    """

    def __init__(self, open_worker: Callable[[], AbstractAsyncContextManager[Worker]]) -> None:
        self._open_worker = open_worker  # called on the thread's loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None  # set on the thread's loop
        self._worker: Worker | None = None
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._ended: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, name="reviewstream-worker", daemon=True)

    @property
    def running(self) -> int:
        return self._worker.running if self._worker is not None else 0

    async def start(self) -> None:
        self._thread.start()
        await asyncio.wrap_future(self._started)

    def begin_shutdown(self) -> None:
        self._call(lambda worker: worker.begin_shutdown())

    async def aclose(self) -> None:
        self._call(lambda _: self._stop.set() if self._stop is not None else None)
        await asyncio.wrap_future(self._ended)
        self._thread.join()

    def _call(self, action: Callable[[Worker], object]) -> None:
        loop, worker = self._loop, self._worker
        if loop is not None and worker is not None:
            with contextlib.suppress(RuntimeError):  # the thread's loop is closed already
                loop.call_soon_threadsafe(action, worker)

    def _main(self) -> None:
        try:
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                runner.run(self._run())
        except Exception as e:
            if not self._started.done():
                self._started.set_exception(e)
            else:
                log.exception("the worker thread failed: this process runs no jobs any more")
        finally:
            if not self._started.done():
                self._started.set_exception(RuntimeError("the worker thread ended at its start"))
            self._ended.set_result(None)

    async def _run(self) -> None:
        self._stop = asyncio.Event()
        async with self._open_worker() as worker:
            self._worker = worker
            self._loop = asyncio.get_running_loop()
            self._started.set_result(None)
            log.info("worker %s running in a thread of its own", worker.name)
            await self._stop.wait()
        # Leaving the block: Worker.aclose waits out the grace begin_shutdown started, hands
        # the rest over, then the thread's pools and hub close.
