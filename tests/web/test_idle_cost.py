"""Idle costs nothing: many idle SSE followers of a few quiet jobs, on a real uvicorn, cost Redis
the hub's check of each job (its status and count), not a read per follower.

The jobs are created through the store and claimed by a worker that never writes, so they stay
running and quiet; the server runs API-only. The streams are opened with the benchmark's lean
HTTP client (``reviewstream.bench.conn``): httpx would spend more time per socket than the
server does. 2,000 streams keep the test near 15 s on two cores.
"""

from __future__ import annotations

import asyncio
import math
import time

import redis.asyncio as aioredis

from reviewstream.bench.conn import Endpoint, HttpConnection
from reviewstream.keys import Keys
from reviewstream.models import ReviewRequest
from reviewstream.settings import Settings
from reviewstream.store import Store
from reviewstream.web import create_app

from tests.support.live import REVIEW, tuned
from tests.support.servers import serve

FOLLOWERS = 2000
JOBS = 10
BASELINE = 3.0  # seconds measured with nobody following
WINDOW = 4.0  # seconds measured with every follower idle
RESYNC = 0.5  # resync_seconds: each quiet job is checked at every sweep (once a second)
COMMANDS_PER_CHECK = 2  # HGET status, LLEN chunks


async def calls(redis: aioredis.Redis) -> int:
    """Redis commands run so far (INFO itself left out)."""
    info = await redis.info("commandstats")
    return sum(v["calls"] for k, v in info.items() if k != "cmdstat_info")


async def quiet_jobs(redis: aioredis.Redis, n: int) -> list[str]:
    """``n`` running jobs whose worker never writes a token."""
    store = Store(redis, Keys(), retention_seconds=60)
    await store.queue.ensure_group()
    jobs = [
        await store.create(
            ReviewRequest.model_validate(REVIEW), provider="simulated", model="sim-default"
        )
        for _ in range(n)
    ]
    for entry in await store.queue.next_entries("silent", n, 100):
        assert await store.claim(entry, "silent", 600_000)
    return jobs


async def open_stream(endpoint: Endpoint, job_id: str, received: list[int]) -> HttpConnection:
    conn = await HttpConnection.open(endpoint)

    def on_body(data: bytes, now: float) -> None:
        if b"event:" in data:
            received.append(1)

    response = conn.request(
        "GET", f"/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}, on_body=on_body
    )
    assert await response.headers == 200
    return conn


async def test_idle_sse_followers_cost_redis_per_job_not_per_follower(
    settings: Settings, redis: aioredis.Redis
) -> None:
    quick = tuned(settings, resync_seconds=RESYNC)
    jobs = await quiet_jobs(redis, JOBS)
    conns: list[HttpConnection] = []
    received: list[int] = []
    async with serve(create_app(quick, run_worker=False)) as base:
        try:
            # What the server costs Redis with these jobs and nobody following them.
            started, before = time.monotonic(), await calls(redis)
            await asyncio.sleep(BASELINE)
            baseline = (await calls(redis) - before) / (time.monotonic() - started)
            endpoint = Endpoint.from_url(base)
            for start in range(0, FOLLOWERS, 200):
                conns += await asyncio.gather(
                    *(open_stream(endpoint, jobs[i % JOBS], received)
                      for i in range(start, start + 200))
                )  # fmt: skip
            await asyncio.sleep(RESYNC + 1.0)  # every follower has read and waits
            started, before = time.monotonic(), await calls(redis)
            await asyncio.sleep(WINDOW)
            used = await calls(redis) - before
            elapsed = time.monotonic() - started
        finally:
            for conn in conns:
                conn.close()
            await asyncio.sleep(0.1)
    assert len(conns) == FOLLOWERS and all(conn.bytes_in > 0 for conn in conns)
    assert not received  # nothing to send, and nothing sent: no follower was woken
    # The bound counts jobs and sweeps, not followers: a list read per follower per resync (four
    # commands in a MULTI) would be some FOLLOWERS * 5 = 10,000 commands a second.
    sweeps = math.ceil(elapsed) + 1
    bound = baseline * elapsed + JOBS * sweeps * COMMANDS_PER_CHECK + 20
    assert used <= bound, (used, baseline * elapsed, bound)
