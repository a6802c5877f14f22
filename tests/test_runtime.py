"""Where ``serve`` runs its workers (``REVIEWSTREAM_SERVE_WORKERS``): a thread with its own event
loop, or a ``reviewstream worker`` child process that the API starts, restarts and stops.

The apps run in the test's process on the suite's Redis; the worker process is a real one (its
job's owner names its pid). test_embedded.py and test_durable.py run ``reviewstream serve``
itself: the child with the embedded Redis, parent SIGKILL, and SIGTERM's exit bound.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time

import httpx
import psutil
import redis.asyncio as aioredis

from reviewstream.keys import Keys
from reviewstream.settings import Settings
from reviewstream.web import create_app

from tests.support.live import REVIEW, tuned
from tests.support.servers import serve


async def finished(c: httpx.AsyncClient, job_id: str, within: float = 20) -> dict[str, object]:
    deadline = time.monotonic() + within
    while True:
        page = (await c.get(f"/jobs/{job_id}", params={"limit": 10000})).json()
        if page["done"]:
            return dict(page)
        assert time.monotonic() < deadline, page
        await asyncio.sleep(0.02)


async def run_one_job(c: httpx.AsyncClient, redis: aioredis.Redis) -> tuple[str, str]:
    """Create a job, read it to its end; its status and the worker that ran it."""
    r = await c.post("/jobs", json=REVIEW)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    page = await finished(c, job_id)
    owner = await redis.hget(Keys().meta(job_id), "owner")
    return str(page["status"]), str(owner)


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "reviewstream-worker"]


def worker_processes() -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process().children()
        if p.is_running() and "worker" in p.cmdline() and "reviewstream" in p.cmdline()
    ]


async def test_thread_workers_finish_a_job_and_stop_cleanly(
    settings: Settings, redis: aioredis.Redis
) -> None:
    s = tuned(settings, serve_workers="thread")
    async with serve(create_app(s)) as base, httpx.AsyncClient(base_url=base) as c:
        assert len(worker_threads()) == 1
        assert (await c.get("/readyz")).status_code == 200
        status, owner = await run_one_job(c, redis)
        assert status == "done"
        assert owner.startswith(f"{socket.gethostname()}:{os.getpid()}:")  # this process
        assert not worker_processes()
    assert not worker_threads()
    assert await redis.zcard(Keys().workers) == 0  # it said goodbye


async def test_a_worker_process_runs_the_jobs_and_stops_with_the_app(
    settings: Settings, redis: aioredis.Redis
) -> None:
    s = tuned(settings, serve_workers="process")
    async with serve(create_app(s)) as base, httpx.AsyncClient(base_url=base) as c:
        # Ready as soon as the app answers: the lifespan waited for the child's heartbeat.
        assert (await c.get("/readyz")).status_code == 200
        [child] = worker_processes()
        status, owner = await run_one_job(c, redis)
        assert status == "done"
        assert owner.startswith(f"{socket.gethostname()}:{child.pid}:")
        assert not worker_threads()
    assert not child.is_running()
    assert await redis.zcard(Keys().workers) == 0


async def test_a_dead_worker_process_shows_in_readyz_and_is_restarted(
    settings: Settings, redis: aioredis.Redis
) -> None:
    s = tuned(settings, serve_workers="process")
    async with serve(create_app(s)) as base, httpx.AsyncClient(base_url=base) as c:
        [child] = worker_processes()
        child.send_signal(signal.SIGKILL)  # serve reaps it (waiting here would steal that)
        deadline = time.monotonic() + 5
        while (await c.get("/readyz")).status_code == 200:  # its heartbeat was dropped
            assert time.monotonic() < deadline, "/readyz still counts the dead worker"
            await asyncio.sleep(0.02)
        deadline = time.monotonic() + 30
        while (await c.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, "no new worker process"
            await asyncio.sleep(0.05)
        [replacement] = worker_processes()
        assert replacement.pid != child.pid
        status, owner = await run_one_job(c, redis)
        assert status == "done"
        assert owner.startswith(f"{socket.gethostname()}:{replacement.pid}:")
    assert not replacement.is_running()
