"""The ``reviewstream`` command: ``serve``, ``worker``, ``bench`` and ``review``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType

import uvicorn

from .observe.logs import configure_logging, secrets_of
from .observe.rundir import run_directory
from .processes import loops
from .settings import Settings

log = logging.getLogger("reviewstream")


class Server(uvicorn.Server):
    """uvicorn, calling ``on_exit`` as soon as a shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self.on_exit()


def serve(args: argparse.Namespace) -> int:
    settings = with_grace(Settings(), args.graceful_timeout)
    configure_logging(settings.log_format, secrets=secrets_of(settings))
    # Before the app (and prometheus_client) is imported: every process of this run writes its
    # series to one directory, which any API process's /metrics reads (observe.exposition).
    with run_directory():
        return _serve(args, settings)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from .web import begin_shutdown, create_app, server_options

    if args.processes is not None:
        settings = settings.model_copy(update={"processes": args.processes})
    if settings.redis_url is None:
        log.info("REVIEWSTREAM_REDIS_URL is unset: starting an embedded redis-server")
    if settings.processes > 1:
        from .processes.serve import Listen, serve_processes

        listen = Listen(args.host, args.port, args.log_level)
        return serve_processes(settings, listen, run_workers=not args.api_only)
    app = create_app(settings, run_worker=not args.api_only)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        lifespan="on",
        log_config=None,  # every line through the process's one handler (observe.logs)
        # Typed int, but any number of seconds works (it is a wait_for timeout).
        timeout_graceful_shutdown=settings.worker_grace_seconds,  # type: ignore[arg-type]
        proxy_headers=True,
        **server_options(settings),
    )
    Server(config, on_exit=lambda: begin_shutdown(app)).run()
    return 0


def with_grace(settings: Settings, graceful_timeout: float | None) -> Settings:
    """``--graceful-timeout``: how long running jobs (and open streams) may take to finish after
    SIGTERM before they are handed over; ``REVIEWSTREAM_WORKER_GRACE_SECONDS`` by default."""
    if graceful_timeout is None:
        return settings
    return settings.model_copy(update={"worker_grace_seconds": graceful_timeout})


async def run_worker(settings: Settings) -> None:
    from .runtime import open_runtime
    from .workers import Worker

    if settings.redis_url is None:
        raise SystemExit("reviewstream worker needs REVIEWSTREAM_REDIS_URL (a shared Redis)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with open_runtime(settings, worker=True, followers=False) as runtime:
        assert isinstance(runtime.worker, Worker)  # inline: this process is the worker
        name = runtime.worker.name
        log.info("worker %s running (concurrency %d)", name, settings.worker_concurrency)
        await stop.wait()
        log.info("worker %s stopping: running jobs are handed over after the grace", name)
        runtime.worker.begin_shutdown()


def worker(args: argparse.Namespace) -> int:
    """Run workers until SIGTERM/SIGINT, then exit the process at once.

    Once ``run_worker`` returns, every job is handed over and every connection closed; the
    interpreter's teardown (freeing every imported module's objects) only adds time, enough on
    a busy machine to push the exit past ``--graceful-timeout`` plus a second. So the process
    ends without it, as ``serve`` does (uvicorn re-raises the SIGTERM it handled).
    """
    settings = with_grace(Settings(), args.graceful_timeout)
    configure_logging(settings.log_format, secrets=secrets_of(settings))
    from .observe.exposition import serve_standalone

    if serve_standalone(settings.metrics_port):
        log.info("worker metrics on port %d (/metrics)", settings.metrics_port)
    loops.run(run_worker(settings))  # uvloop: less CPU per token than asyncio's loop
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reviewstream", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the API (with in-process workers unless --api-only)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-only", action="store_true", help="run no workers in this process")
    s.add_argument("--log-level", default="info")
    s.add_argument(
        "--processes",
        type=_at_least_one,
        default=None,
        help="API processes on the one port (default REVIEWSTREAM_PROCESSES, 1)",
    )
    grace = "seconds running jobs may take after SIGTERM before they are handed over"
    s.add_argument("--graceful-timeout", type=float, default=None, help=grace)
    s.set_defaults(func=serve)

    w = sub.add_parser("worker", help="run workers alone against REVIEWSTREAM_REDIS_URL")
    w.add_argument("--graceful-timeout", type=float, default=None, help=grace)
    w.set_defaults(func=worker)

    from .bench import cli as bench_cli
    from .client import cli as client_cli

    b = sub.add_parser("bench", help="compare the four delivery modes on the same jobs")
    bench_cli.add_arguments(b)
    b.set_defaults(func=bench_cli.run)

    r = sub.add_parser("review", help="write a review on a running server and print it live")
    client_cli.add_arguments(r)
    r.set_defaults(func=client_cli.run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure_logging("text")  # serve and worker configure it again from their settings
    return int(args.func(args))
