"""Workers as real processes: an accepted job is never lost; a dead worker's job fails in time."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from reviewstream.hub import Hub
from reviewstream.keys import Keys
from reviewstream.models import JobStatus, ReviewRequest
from reviewstream.settings import Settings
from reviewstream.store import JobStore
from reviewstream.worker import Worker

REQUEST = ReviewRequest(employee_name="Grace Hopper", employee_review_points="Wrote a compiler.")


def worker_process(settings: Settings, **env: str) -> subprocess.Popen[bytes]:
    """``reviewstream worker`` in a child process, configured like ``settings``."""
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("REVIEWSTREAM_")},
        "REVIEWSTREAM_REDIS_URL": str(settings.redis_url),
        "REVIEWSTREAM_LEASE_SECONDS": str(settings.lease_seconds),
        "REVIEWSTREAM_CLAIM_IDLE_SECONDS": str(settings.claim_idle_seconds),
        "REVIEWSTREAM_REAP_INTERVAL_SECONDS": str(settings.reap_interval_seconds),
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "reviewstream", "worker"],
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
def store(redis: aioredis.Redis) -> JobStore:
    return JobStore(redis, Keys(), retention_seconds=60)


@pytest.fixture
async def in_process_worker(
    store: JobStore, redis: aioredis.Redis, settings: Settings
) -> AsyncIterator[Worker]:
    hub = Hub(redis, store.keys)
    await hub.start()
    async with httpx.AsyncClient() as http:
        worker = Worker(store, hub, settings, http, grace_seconds=0.5)
        yield worker
        await worker.aclose()
    await hub.aclose()


async def wait_for(store: JobStore, job_id: str, predicate: object, timeout: float) -> float:
    """Seconds until ``predicate(snapshot)`` holds; fails after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        snap = await store.read(job_id, 0, 100_000)
        if predicate(snap):  # type: ignore[operator]
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    pytest.fail(f"job {job_id} did not get there in {timeout}s: {snap}")


async def test_worker_writes_job_to_the_end(in_process_worker: Worker, store: JobStore) -> None:
    await in_process_worker.start()
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    await wait_for(store, job_id, lambda s: s.done, 20)
    snap = await store.read(job_id, 0, 100_000)
    assert snap.status is JobStatus.DONE and "Grace Hopper" in "".join(snap.tokens)
    assert snap.usage is not None and snap.usage["output_tokens"] == len(snap.tokens)


async def test_job_queued_while_a_worker_died_is_finished_by_another(
    settings: Settings, store: JobStore, in_process_worker: Worker
) -> None:
    """A worker killed before pickup loses nothing: the job waits in the queue."""
    proc = worker_process(settings)
    await asyncio.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    await asyncio.sleep(0.2)
    assert (await store.read(job_id, 0, 1)).status is JobStatus.QUEUED
    await in_process_worker.start()
    await wait_for(store, job_id, lambda s: s.status is JobStatus.DONE, 20)


async def test_entry_read_by_dead_worker_is_taken_over(
    store: JobStore, in_process_worker: Worker
) -> None:
    """A worker that read the queue entry but died before claiming it: another takes over."""
    await store.ensure_group()
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    [entry] = await store.next_entries("died-before-claim", count=1, block_ms=100)
    assert entry.job_id == job_id
    await in_process_worker.start()
    elapsed = await wait_for(store, job_id, lambda s: s.status is JobStatus.DONE, 20)
    assert elapsed < 10


async def test_worker_killed_mid_stream_fails_job_within_lease_bound(
    settings: Settings, store: JobStore, in_process_worker: Worker
) -> None:
    proc = worker_process(settings, REVIEWSTREAM_SIM_TOKENS_PER_SECOND="20")
    try:
        job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
        await wait_for(store, job_id, lambda s: len(s.tokens) >= 3, 20)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at = time.monotonic()
        await in_process_worker.start()
        await wait_for(store, job_id, lambda s: s.status.terminal, 10)
        took = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
    snap = await store.read(job_id, 0, 100_000)
    assert snap.status is JobStatus.FAILED and "lease" in (snap.error or "")
    bound = settings.lease_seconds + 2 * settings.reap_interval_seconds + 1.0
    assert took < bound, f"took {took:.2f}s, bound {bound:.2f}s"


async def test_graceful_shutdown_ends_running_jobs_clearly(
    settings: Settings, store: JobStore, in_process_worker: Worker
) -> None:
    slow = Worker(
        store,
        in_process_worker.hub,
        settings.model_copy(update={"sim_tokens_per_second": 10}),
        in_process_worker.http,
        grace_seconds=0.1,
    )
    await slow.start()
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    await wait_for(store, job_id, lambda s: s.tokens, 10)
    await slow.aclose()
    snap = await store.read(job_id, 0, 100_000)
    assert snap.status is JobStatus.FAILED and "shut down" in (snap.error or "")
