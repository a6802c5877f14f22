"""Where workers run: the worker, the reaper, and the placements a process runs them in.

- ``worker``: ``Worker`` claims queued jobs and streams each one's model output into the store;
- ``handover``: ``let_go``, the one way a lost producer's job goes back to the queue (or fails);
- ``reaper``: ``Reaper``, in every process, requeues lapsed leases and fails stale queued jobs;
- ``placement``: ``open_workers``, a process's workers where ``REVIEWSTREAM_SERVE_WORKERS``
  says: ``inline`` on its own event loop, ``thread`` (``thread.WorkerThread``) on a loop of
  their own, ``process`` (``process.WorkerProcess``) in a supervised child process;
  ``Producers``, what the API holds of them wherever they run;
- ``shares``: each API process's share of the concurrency under ``serve --processes N``.

The package opens no connection of its own: ``runtime`` passes in how a worker opens its Redis
pool, hub and HTTP client (``placement.OpenWorker``), so this package never imports it.
"""

from __future__ import annotations

from .handover import let_go, max_attempts
from .placement import OpenWorker, Producers, open_workers
from .process import WorkerProcess
from .reaper import Reaper
from .thread import WorkerThread
from .worker import Worker

__all__ = [
    "OpenWorker",
    "Producers",
    "Reaper",
    "Worker",
    "WorkerProcess",
    "WorkerThread",
    "let_go",
    "max_attempts",
    "open_workers",
]
