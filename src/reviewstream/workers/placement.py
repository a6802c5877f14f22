"""Where a process runs its workers (``REVIEWSTREAM_SERVE_WORKERS`` under ``serve``).

- ``inline``: a ``Worker`` on this event loop, with the providers' HTTP client and a Redis pool
  of its own (a burst of followers must never starve appends and lease renewals), sharing the
  process's hub;
- ``thread``: the same ``Worker`` in a thread of this process, on an event loop of its own with
  its own Redis pools, hub and HTTP client (``WorkerThread``): API requests never queue in front
  of a producer's step, though both threads still share the GIL;
- ``process``: a ``reviewstream worker`` child process (``WorkerProcess``), started and
  supervised here, on the same Redis; API load cannot reach it at all.

Whichever it is, the API holds it as ``Producers``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from ..hub import Hub
from ..settings import Settings, WorkersIn
from ..store import Store
from .process import WorkerProcess
from .thread import WorkerThread
from .worker import Worker

# Opens a started ``Worker`` on the running event loop, on a Redis pool and HTTP client of its
# own, sharing the hub given, or opening one of its own with None (``runtime.running_worker``).
OpenWorker = Callable[[Hub | None], AbstractAsyncContextManager[Worker]]


class Producers(Protocol):
    """What the API holds of the workers ``serve`` runs, wherever they run (``open_workers``)."""

    @property
    def running(self) -> int:
        """Jobs running in this process (0 when the workers run in a child process)."""
        ...

    def begin_shutdown(self) -> None:
        """Stop claiming now and start the grace period; safe from the API's event loop."""
        ...


@contextlib.asynccontextmanager
async def open_workers(
    where: WorkersIn,
    open_worker: OpenWorker,
    hub: Hub,
    url: str,
    settings: Settings,
    store: Store,
) -> AsyncIterator[Producers]:
    """The workers of one process, started ``where`` it runs them (see the module docstring):
    inline on the process's ``hub``; a thread's or a child process's on Redis at ``url``."""
    if where == "inline":
        async with open_worker(hub) as worker:
            yield worker
        return
    producers: WorkerThread | WorkerProcess = (
        WorkerThread(lambda: open_worker(None))
        if where == "thread"
        else WorkerProcess(url, settings, store.workers)
    )
    await producers.start()
    try:
        yield producers
    finally:
        await producers.aclose()
