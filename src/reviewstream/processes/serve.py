"""``reviewstream serve --processes N``: N API processes on one port, under uvicorn's own
supervisor (``uvicorn.supervisors.Multiprocess``), nothing home-made.

The parent (``serve_processes``) starts once what every API process shares, then the API
processes:

- the Redis URL: ``REVIEWSTREAM_REDIS_URL``, or the embedded redis-server it starts
  (``runtime.redis_url``), whose URL every API process is given;
- the workers, unless ``--api-only``: with ``REVIEWSTREAM_SERVE_WORKERS=process`` (the default)
  one ``WorkerProcess``, the parent's child, running the configured concurrency in total; with
  ``thread`` or ``inline`` each API process runs its share of it (``workers.shares``), so that the
  processes together run the configured concurrency;
- the listening socket, bound once, and uvicorn's supervisor, which spawns the API processes on
  it, pings them, and replaces one that dies.

Each API process builds its app with ``ApiProcess``, a picklable app factory (the settings go to
the child whole, with the Redis URL): it asks to die with the parent (``PR_SET_PDEATHSIG``,
as the worker process and the embedded Redis do, so that nothing outlives a SIGKILLed parent),
and chains ``begin_shutdown(app)`` to uvicorn's signal handler, as ``serve``'s one process does.

SIGTERM (or SIGINT) to the parent drains everything at once: the supervisor sends SIGTERM to the
API processes (their streams end, they finish within ``--graceful-timeout``) while the worker
process gets its SIGTERM (its grace starts); then Redis, embedded or not, is closed last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from ..keys import Keys
from ..observe.logs import configure_logging, secrets_of
from ..runtime import job_store, redis_client, redis_url
from ..settings import Settings
from ..web import begin_shutdown, create_app, server_options
from ..workers import WorkerProcess
from ..workers.shares import claim_slot, slot_file, worker_share
from .redis_server import die_with_parent

log = logging.getLogger(__name__)

STOP_MARGIN_SECONDS = 5.0  # past the grace, API processes still running are killed


def drain_on_exit_signals(app: FastAPI) -> None:
    """Chain ``begin_shutdown(app)`` to the server's SIGINT and SIGTERM handlers.

    uvicorn installs them (``Server.capture_signals``) before it loads the app, and puts the
    previous ones back when it is done; ``serve``'s one process does the same by subclassing
    ``uvicorn.Server``, which the supervisor's processes cannot.
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        server_handler = signal.getsignal(sig)
        if not callable(server_handler):
            continue

        def handler(signum: int, frame: object, server_handler: object = server_handler) -> None:
            assert callable(server_handler)
            server_handler(signum, frame)
            begin_shutdown(app)

        signal.signal(sig, handler)


@dataclass
class ApiProcess:
    """The app factory each API process calls (``uvicorn.Config(..., factory=True)``)."""

    settings: Settings
    parent: int
    slots: str | None = None  # thread or inline workers: the file their shares are claimed in
    _held: IO[bytes] | None = field(default=None, repr=False, compare=False)

    def __call__(self) -> FastAPI:
        die_with_parent(self.parent)
        # A spawned process configures its logging anew, as the parent did (observe.logs).
        configure_logging(self.settings.log_format, secrets=secrets_of(self.settings))
        settings, run_worker = self.settings, self.slots is not None
        if self.slots is not None:
            processes = settings.processes
            slot, self._held = claim_slot(self.slots, processes)
            share = worker_share(settings.worker_concurrency, processes, slot)
            log.info("API process %d runs %d of the workers' concurrency", os.getpid(), share)
            run_worker = share > 0
            if run_worker:
                settings = settings.model_copy(update={"worker_concurrency": share})
        app = create_app(settings, run_worker=run_worker)
        drain_on_exit_signals(app)
        return app


@contextlib.asynccontextmanager
async def worker_process(url: str, settings: Settings) -> AsyncIterator[WorkerProcess]:
    """The parent's one ``WorkerProcess``, started (its heartbeat is in Redis) and supervised."""
    redis = redis_client(url, settings)
    try:
        store = job_store(redis, Keys(settings.key_prefix, settings.queue_shards), settings)
        workers = WorkerProcess(url, settings, store.workers)
        await workers.start()
        try:
            yield workers
        finally:
            await workers.aclose()
    finally:
        await redis.aclose()


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int
    log_level: str


def serve_processes(settings: Settings, listen: Listen, *, run_workers: bool) -> int:
    """Run ``settings.processes`` API processes on one port until SIGTERM or SIGINT; each
    logs as ``settings.log_format`` says."""
    return asyncio.run(_parent(settings, listen, run_workers=run_workers))


async def _parent(settings: Settings, listen: Listen, *, run_workers: bool) -> int:
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(redis_url(settings))
        settings = settings.model_copy(update={"redis_url": url})
        workers: WorkerProcess | None = None
        slots: str | None = None
        if run_workers and settings.serve_workers == "process":
            workers = await stack.enter_async_context(worker_process(url, settings))
        elif run_workers:
            slots = stack.enter_context(slot_file())
        factory = ApiProcess(settings, os.getpid(), slots)
        config = uvicorn.Config(
            factory,
            factory=True,
            workers=settings.processes,
            host=listen.host,
            port=listen.port,
            log_level=listen.log_level,
            lifespan="on",
            log_config=None,  # every line through the process's one handler (observe.logs)
            # Typed int, but any number of seconds works (it is a wait_for timeout).
            timeout_graceful_shutdown=settings.worker_grace_seconds,  # type: ignore[arg-type]
            proxy_headers=True,
            **server_options(settings),
        )
        sock = config.bind_socket()
        stack.callback(sock.close)
        supervisor = Multiprocess(config, sockets=[sock])  # its signal handlers, then ours
        stopping = asyncio.Event()

        def stop(sig: signal.Signals) -> None:
            if stopping.is_set():
                return
            log.info("%s: stopping %d API processes and the workers", sig.name, config.workers)
            stopping.set()
            supervisor.should_exit.set()  # the supervisor sends its processes SIGTERM
            if workers is not None:
                workers.begin_shutdown()  # the worker process's grace starts now, not after

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop, sig)
            stack.callback(loop.remove_signal_handler, sig)
        # The supervisor's loop blocks: its own thread, which also spawns (and so is the
        # PR_SET_PDEATHSIG parent of) every API process, and outlives them.
        running = asyncio.ensure_future(asyncio.to_thread(supervisor.run))
        stopped = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not running.done():
            bound = settings.worker_grace_seconds + STOP_MARGIN_SECONDS
            if not (await asyncio.wait({running}, timeout=bound))[0]:
                log.error("API processes still running %g s after the signal: killing them", bound)
                for process in supervisor.processes:
                    with contextlib.suppress(OSError, ValueError):
                        process.kill()
            await running
        if not stopping.is_set():
            log.error("the API processes could not start: stopping")
            return 1
    return 0
