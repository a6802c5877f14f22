"""``alongside(watch)``: run a watcher beside the current task, for one block, as an owned task.

A live stream has two jobs: send what the follower yields, and watch the client (a disconnect,
a WebSocket command). The sending stays in the request's own task; only the watcher gets a task.
The first to finish ends the other: when the block ends, the watcher is cancelled and awaited;
when the watcher ends first, the block is cancelled — quietly if the watcher returned, with the
watcher's exception if it raised. Any other cancellation of the task goes on up unchanged.

Per stream this costs one task, where a task group around two tasks (or sse-starlette's four)
costs several: it matters with thousands of open streams per process. The task runs the watcher
itself (a done callback, not a wrapping coroutine, notices its end) and the object has slots:
every open stream holds one for its whole life (benchmarks/README.md, "Idle memory per
connection").
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from types import TracebackType
from typing import Any


class alongside:  # lower case: read as a function, ``async with alongside(watch):``
    __slots__ = ("_block_done", "_cut_short", "_error", "_host", "_task", "_watch")

    def __init__(self, watch: Coroutine[Any, Any, None]) -> None:
        self._watch = watch
        self._host: asyncio.Task[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._block_done = False
        self._cut_short = False  # the watcher ended first and cancelled the block
        self._error: BaseException | None = None

    async def __aenter__(self) -> None:
        self._host = asyncio.current_task()
        if self._host is None:
            raise RuntimeError("alongside() needs a running task")
        self._task = asyncio.create_task(self._watch)
        self._task.add_done_callback(self._watcher_done)

    def _watcher_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        self._error = task.exception()
        # The watcher ended first: end the block, unless it is already ending by itself.
        if not self._block_done:
            assert self._host is not None
            self._cut_short = True
            self._host.cancel()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> bool:
        self._block_done = True  # set before any await: the watcher cannot cancel us after this
        assert self._task is not None and self._host is not None
        if not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task])
        self._watch.close()  # a watcher cancelled before it started was never awaited
        if self._cut_short and et is asyncio.CancelledError and self._host.uncancel() == 0:
            if self._error is not None:
                raise self._error
            return True
        return False
