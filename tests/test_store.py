"""JobStore against a real Redis: atomic append + notify, terminal transition, expiry, queue."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis

from reviewstream.errors import JobFinished, JobNotFound
from reviewstream.keys import Keys
from reviewstream.models import JobStatus, ReviewRequest
from reviewstream.store import JobStore

REQUEST = ReviewRequest(employee_name="Ada", employee_review_points="Shipped the thing.")


@pytest.fixture
def store(redis: aioredis.Redis) -> JobStore:
    return JobStore(redis, Keys("t"), retention_seconds=2)


async def running_job(store: JobStore, owner: str = "w1") -> str:
    await store.ensure_group()
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    [entry] = await store.next_entries(owner, count=1, block_ms=100)
    assert entry.job_id == job_id
    assert await store.claim(entry, owner, lease_ms=5000)
    return job_id


async def test_create_queues_job_and_read_reports_it(store: JobStore) -> None:
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    snap = await store.read(job_id, 0, 10)
    assert snap.status is JobStatus.QUEUED
    assert (snap.tokens, snap.count, snap.done) == ([], 0, False)
    assert json.loads((await store.meta(job_id))["request"])["employee_name"] == "Ada"


async def test_unknown_job_is_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        await store.read("nope", 0, 10)


async def test_notification_never_precedes_its_data(store: JobStore, redis: aioredis.Redis) -> None:
    """Every notification's tokens are already in the list when the notification arrives."""
    job_id = await running_job(store)
    pubsub = redis.pubsub()
    await pubsub.subscribe(store.keys.channel(job_id))
    checker = aioredis.Redis(connection_pool=redis.connection_pool)

    async def produce() -> None:
        for i in range(200):
            assert await store.append(job_id, "w1", [f" t{i}"])

    task = asyncio.create_task(produce())
    seen = 0
    while seen < 200:
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        if msg is None:
            continue
        data = json.loads(msg["data"])
        assert data["offset"] == seen
        stored = await checker.lrange(store.keys.chunks(job_id), data["offset"], data["offset"])
        assert stored == data["tokens"]
        seen += len(data["tokens"])
    await task
    await pubsub.aclose()


async def test_order_kept_under_concurrent_jobs(store: JobStore) -> None:
    await store.ensure_group()
    jobs = [await running_job(store, owner=f"w{i}") for i in range(8)]

    async def produce(i: int, job_id: str) -> None:
        for n in range(100):
            assert await store.append(job_id, f"w{i}", [f"{i}:{n}"])
            if n % 7 == 0:
                await asyncio.sleep(0)

    await asyncio.gather(*(produce(i, j) for i, j in enumerate(jobs)))
    for i, job_id in enumerate(jobs):
        snap = await store.read(job_id, 0, 1000)
        assert snap.tokens == [f"{i}:{n}" for n in range(100)]
        assert len(snap.ts) == 100 and snap.ts == sorted(snap.ts)


async def test_finish_is_once_after_last_token_and_keys_expire(
    store: JobStore, redis: aioredis.Redis
) -> None:
    job_id = await running_job(store)
    assert await store.append(job_id, "w1", ["Hello", " world"])
    pubsub = redis.pubsub()
    await pubsub.subscribe(store.keys.channel(job_id))
    await pubsub.get_message(timeout=1)
    assert await store.finish(job_id, JobStatus.DONE, usage={"output_tokens": 2}, owner="w1")
    assert not await store.finish(job_id, JobStatus.FAILED, error="late", owner="w1")
    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
    assert msg is not None
    end = json.loads(msg["data"])["end"]
    assert (end["status"], end["next_offset"], end["usage"]) == ("done", 2, {"output_tokens": 2})
    await pubsub.aclose()
    # Appends after the end are refused: a late producer cannot add to a finished stream.
    assert not await store.append(job_id, "w1", ["!"])
    snap = await store.read(job_id, 0, 10)
    assert snap.done and snap.tokens == ["Hello", " world"]
    for key in (store.keys.meta(job_id), store.keys.chunks(job_id), store.keys.times(job_id)):
        assert 0 < await redis.ttl(key) <= 2
    await asyncio.sleep(2.2)
    with pytest.raises(JobNotFound):
        await store.read(job_id, 0, 10)


async def test_foreign_owner_cannot_append_or_finish(store: JobStore) -> None:
    job_id = await running_job(store, owner="w1")
    assert not await store.append(job_id, "intruder", ["x"])
    assert not await store.finish(job_id, JobStatus.DONE, owner="intruder")
    assert (await store.read(job_id, 0, 10)).status is JobStatus.RUNNING


async def test_cancel_ends_job_and_second_cancel_conflicts(store: JobStore) -> None:
    job_id = await running_job(store)
    await store.cancel(job_id)
    snap = await store.read(job_id, 0, 10)
    assert snap.status is JobStatus.CANCELLED and snap.done
    with pytest.raises(JobFinished):
        await store.cancel(job_id)
    assert not await store.renew(job_id, "w1", 1000)


async def test_lapsed_lease_is_reaped_as_failed(store: JobStore) -> None:
    await store.ensure_group()
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    [entry] = await store.next_entries("w1", count=1, block_ms=100)
    assert await store.claim(entry, "w1", lease_ms=100)
    assert await store.reap_lapsed_leases() == []
    await asyncio.sleep(0.15)
    assert await store.reap_lapsed_leases() == [job_id]
    snap = await store.read(job_id, 0, 10)
    assert snap.status is JobStatus.FAILED and snap.error and "lease" in snap.error


async def test_entry_of_dead_consumer_is_reclaimed(store: JobStore) -> None:
    await store.ensure_group()
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    [entry] = await store.next_entries("dead", count=1, block_ms=100)
    assert await store.reclaim_entries("alive", min_idle_ms=10_000, count=5) == []
    await asyncio.sleep(0.05)
    [again] = await store.reclaim_entries("alive", min_idle_ms=10, count=5)
    assert again == entry
    assert await store.claim(again, "alive", lease_ms=1000)
    # Claimed entries are gone from the queue: nothing left to reclaim.
    await asyncio.sleep(0.05)
    assert await store.reclaim_entries("other", min_idle_ms=10, count=5) == []
    assert (await store.read(job_id, 0, 1)).status is JobStatus.RUNNING


async def test_scripts_survive_a_redis_script_flush(store: JobStore, redis: aioredis.Redis) -> None:
    """A restarted (or flushed) Redis forgets loaded scripts: the store loads them again."""
    job_id = await running_job(store)
    assert await store.append(job_id, "w1", [" one"])
    await redis.script_flush()
    assert await store.append(job_id, "w1", [" two"])
    await redis.script_flush()
    assert await store.finish(job_id, JobStatus.DONE, owner="w1")
    snap = await store.read(job_id, 0, 10)
    assert snap.tokens == [" one", " two"] and snap.done
