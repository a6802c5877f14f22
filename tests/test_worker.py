"""Workers: an accepted job is never lost, and a lost producer's job is finished by another."""

from __future__ import annotations

import asyncio
import json
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
from reviewstream.runtime import running_worker
from reviewstream.settings import Settings
from reviewstream.store import Store, text_digest
from reviewstream.workers import Reaper, Worker

from tests.support.upstreams import Reply, ScriptedUpstream, openai_frames

REQUEST = ReviewRequest(employee_name="Grace Hopper", employee_review_points="Wrote a compiler.")


def worker_process(settings: Settings, **env: str) -> subprocess.Popen[bytes]:
    """``reviewstream worker`` in a child process, configured like ``settings``."""
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("REVIEWSTREAM_")},
        "REVIEWSTREAM_REDIS_URL": str(settings.redis_url),
        "REVIEWSTREAM_LEASE_SECONDS": str(settings.lease_seconds),
        "REVIEWSTREAM_CLAIM_IDLE_SECONDS": str(settings.claim_idle_seconds),
        "REVIEWSTREAM_REAP_INTERVAL_SECONDS": str(settings.reap_interval_seconds),
        "REVIEWSTREAM_QUEUE_SHARDS": str(settings.queue_shards),
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "reviewstream", "worker"],
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture(params=[1, 3], ids=["1-shard", "3-shards"])
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """Every test with one queue shard and with three."""
    return settings.model_copy(update={"queue_shards": request.param})


@pytest.fixture
def store(redis: aioredis.Redis, settings: Settings) -> Store:
    return Store(redis, Keys(settings.key_prefix, settings.queue_shards), retention_seconds=60)


@pytest.fixture
async def in_process_worker(
    store: Store, redis: aioredis.Redis, settings: Settings
) -> AsyncIterator[Worker]:
    hub = Hub(redis, store.keys, store.jobs)
    await hub.start()
    reaper = Reaper(store, settings)  # every process runs one
    await reaper.start()
    async with httpx.AsyncClient() as http:
        worker = Worker(store, hub, settings, http, grace_seconds=0.5)
        yield worker
        await worker.aclose()
    await reaper.aclose()
    await hub.aclose()


async def wait_for(store: Store, job_id: str, predicate: object, timeout: float) -> float:
    """Seconds until ``predicate(snapshot)`` holds; fails after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        snap = await store.jobs.read(job_id, 0, 100_000)
        if predicate(snap):  # type: ignore[operator]
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    pytest.fail(f"job {job_id} did not get there in {timeout}s: {snap}")


async def test_worker_writes_job_to_the_end(in_process_worker: Worker, store: Store) -> None:
    await in_process_worker.start()
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    await wait_for(store, job_id, lambda s: s.done, 20)
    snap = await store.jobs.read(job_id, 0, 100_000)
    assert snap.status is JobStatus.DONE and "Grace Hopper" in "".join(snap.tokens)
    assert snap.usage is not None and snap.usage["output_tokens"] == len(snap.tokens)


async def test_job_queued_while_a_worker_died_is_finished_by_another(
    settings: Settings, store: Store, in_process_worker: Worker
) -> None:
    """A worker killed before pickup loses nothing: the job waits in the queue."""
    proc = worker_process(settings)
    await asyncio.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    await asyncio.sleep(0.2)
    assert (await store.jobs.read(job_id, 0, 1)).status is JobStatus.QUEUED
    await in_process_worker.start()
    await wait_for(store, job_id, lambda s: s.status is JobStatus.DONE, 20)


async def test_entry_read_by_dead_worker_is_taken_over(
    store: Store, in_process_worker: Worker
) -> None:
    """A worker that read the queue entry but died before claiming it: another takes over."""
    await store.queue.ensure_group()
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    [entry] = await store.queue.next_entries("died-before-claim", count=1, block_ms=100)
    assert entry.job_id == job_id
    await in_process_worker.start()
    elapsed = await wait_for(store, job_id, lambda s: s.status is JobStatus.DONE, 20)
    assert elapsed < 10


async def test_worker_killed_mid_stream_with_on_loss_fail_fails_within_lease_bound(
    settings: Settings, store: Store
) -> None:
    """``REVIEWSTREAM_ON_PRODUCER_LOSS=fail``: the behaviour before durable jobs."""
    proc = worker_process(settings, REVIEWSTREAM_SIM_TOKENS_PER_SECOND="20")
    try:
        job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
        await wait_for(store, job_id, lambda s: len(s.tokens) >= 3, 20)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at = time.monotonic()
        reaper = Reaper(store, settings.model_copy(update={"on_producer_loss": "fail"}))
        await reaper.start()
        await wait_for(store, job_id, lambda s: s.status.terminal, 10)
        took = time.monotonic() - killed_at
        await reaper.aclose()
    finally:
        if proc.poll() is None:
            proc.kill()
    snap = await store.jobs.read(job_id, 0, 100_000)
    assert snap.status is JobStatus.FAILED and "lease" in (snap.error or "")
    assert snap.attempts == 1
    bound = settings.lease_seconds + 2 * settings.reap_interval_seconds + 1.0
    assert took < bound, f"took {took:.2f}s, bound {bound:.2f}s"


async def test_graceful_shutdown_hands_running_jobs_over(
    settings: Settings, store: Store, in_process_worker: Worker
) -> None:
    """A worker that shuts down requeues its job; another continues after the stored text."""
    slow = Worker(
        store,
        in_process_worker.hub,
        settings.model_copy(update={"sim_tokens_per_second": 10}),
        in_process_worker.http,
        grace_seconds=0.1,
    )
    await slow.start()
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    await wait_for(store, job_id, lambda s: len(s.tokens) >= 2, 10)
    await slow.aclose()
    snap = await store.jobs.read(job_id, 0, 100_000)
    assert (snap.status, snap.attempts) == (JobStatus.QUEUED, 1)
    before = snap.tokens
    await in_process_worker.start()
    await wait_for(store, job_id, lambda s: s.status.terminal, 20)
    snap = await store.jobs.read(job_id, 0, 100_000)
    assert (snap.status, snap.attempts) == (JobStatus.DONE, 2)
    assert snap.tokens[: len(before)] == before
    assert snap.sha256 == text_digest(snap.tokens)


async def test_upstream_that_always_breaks_mid_stream_fails_naming_every_attempt(
    settings: Settings, store: Store, redis: aioredis.Redis, upstream: ScriptedUpstream
) -> None:
    """Each attempt continues after the stored text until MAX_ATTEMPTS is spent."""
    for texts in (["One", " two"], [" three", " four"], [" five", " six"]):
        upstream.script(Reply(frames=openai_frames(texts, usage=None, done=False), cut=True))
    tuned = settings.model_copy(update={"openai_base_url": upstream.url + "/v1", "max_attempts": 3})
    hub = Hub(redis, store.keys, store.jobs)
    await hub.start()
    async with httpx.AsyncClient() as http:
        worker = Worker(store, hub, tuned, http, grace_seconds=0.1)
        await worker.start()
        try:
            job_id = await store.create(REQUEST, provider="openai", model="gpt-4o-mini")
            await wait_for(store, job_id, lambda s: s.status.terminal, 20)
        finally:
            await worker.aclose()
            await hub.aclose()
    snap = await store.jobs.read(job_id, 0, 100)
    assert (snap.status, snap.attempts) == (JobStatus.FAILED, 3)
    assert snap.tokens == ["One", " two", " three", " four", " five", " six"]
    error = snap.error or ""
    assert error.startswith("gave up after 3 attempts: ")
    for attempt in (1, 2, 3):
        assert f"attempt {attempt}: upstream broke mid-stream" in error
    # Attempts 2 and 3 were asked to continue the stored text.
    bodies = [r.json for r in upstream.requests]
    assert len(bodies) == 3
    assert "One two" not in json.dumps(bodies[0])
    assert "One two" in json.dumps(bodies[1]) and "One two three four" in json.dumps(bodies[2])


async def test_on_producer_loss_restart_writes_again_after_the_stored_tokens(
    settings: Settings, store: Store, redis: aioredis.Redis, in_process_worker: Worker
) -> None:
    """``restart``: the next attempt starts from the prompt, announced with ``reset``."""
    restart = settings.model_copy(update={"on_producer_loss": "restart"})
    slow = Worker(
        store,
        in_process_worker.hub,
        restart.model_copy(update={"sim_tokens_per_second": 10}),
        in_process_worker.http,
        grace_seconds=0.1,
    )
    await slow.start()
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    pubsub = redis.pubsub()
    await pubsub.subscribe(store.keys.channel(job_id))
    await wait_for(store, job_id, lambda s: len(s.tokens) >= 3, 10)
    await slow.aclose()
    before = (await store.jobs.read(job_id, 0, 100_000)).tokens
    again = Worker(store, in_process_worker.hub, restart, in_process_worker.http)
    await again.start()
    try:
        await wait_for(store, job_id, lambda s: s.status.terminal, 20)
    finally:
        await again.aclose()
    snap = await store.jobs.read(job_id, 0, 100_000)
    assert (snap.status, snap.attempts) == (JobStatus.DONE, 2)
    rewritten = snap.tokens[len(before) :]
    assert snap.tokens[: len(before)] == before
    assert rewritten[: len(before)] == before  # the same review, from its first word
    notices = []  # everything the job published, read back in order
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if msg is not None and "status" in (data := json.loads(msg["data"])):
            notices.append(data["status"])
    reset = {"status": "running", "attempt": 2, "offset": len(before), "reset": True}
    assert notices[-1] == reset
    await pubsub.aclose()


async def test_a_lost_attempt_letting_go_leaves_the_next_attempt_its_lease(
    store: Store, redis: aioredis.Redis, settings: Settings
) -> None:
    """The worker claims a job's next attempt while its lost one is still letting go (waiting
    for its first token until a renewal tells it to stop): when the lost one ends, the next one
    stays among the leases the worker renews, and ends the job at that attempt."""
    # Each attempt waits past the 1 s lease for its first token, then writes for about 3 s.
    slow = settings.model_copy(update={"sim_first_token_ms": 1500, "sim_tokens_per_second": 40})
    hub = Hub(redis, store.keys, store.jobs)
    await hub.start()
    reaper = Reaper(store, slow)
    await reaper.start()
    try:
        async with httpx.AsyncClient() as http:
            worker = Worker(store, hub, slow, http, grace_seconds=0.5)
            await worker.start()
            try:
                short = REQUEST.model_copy(update={"length_words": 100})
                job_id = await store.create(short, provider="simulated", model="sim-default")
                await wait_for(store, job_id, lambda s: s.status is JobStatus.RUNNING, 10)
                first = await store.jobs.attempts(job_id)
                await store.requeue(job_id, "lost on purpose", max_attempts=3, owner=first.owner)
                await wait_for(store, job_id, lambda s: s.done, 20)
            finally:
                await worker.aclose()
    finally:
        await reaper.aclose()
        await hub.aclose()
    snap = await store.jobs.read(job_id, 0, 100_000)
    assert (snap.status, snap.attempts) == (JobStatus.DONE, 2), snap.error


async def test_a_worker_hears_its_jobs_ends_and_none_of_their_tokens(
    store: Store, redis: aioredis.Redis, settings: Settings
) -> None:
    # A token every 5 s, leases renewed every 10 s: only the end's notice stops it sooner.
    slow = settings.model_copy(update={"sim_tokens_per_second": 0.2, "lease_seconds": 30})
    keys = store.keys
    async with running_worker(str(slow.redis_url), keys, slow) as worker:
        job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
        await wait_for(store, job_id, lambda s: len(s.tokens) >= 1, 10)

        listening = dict(await redis.pubsub_numsub(keys.channel(job_id), keys.ends(job_id)))
        assert listening == {keys.channel(job_id): 0, keys.ends(job_id): 1}

        await store.cancel(job_id)
        async with asyncio.timeout(2):
            while worker.running:
                await asyncio.sleep(0.01)
    snap = await store.jobs.read(job_id, 0, 100)
    assert snap.status is JobStatus.CANCELLED and len(snap.tokens) == 1


async def test_a_worker_process_listens_to_its_jobs_ends_only(
    store: Store, redis: aioredis.Redis, settings: Settings
) -> None:
    proc = worker_process(settings, REVIEWSTREAM_SIM_TOKENS_PER_SECOND="5")
    try:
        job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
        await wait_for(store, job_id, lambda s: len(s.tokens) >= 1, 20)
        keys = store.keys
        listening = dict(await redis.pubsub_numsub(keys.channel(job_id), keys.ends(job_id)))
        assert listening == {keys.channel(job_id): 0, keys.ends(job_id): 1}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
