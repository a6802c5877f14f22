"""The store against a real Redis: atomic append + notify, terminal transition, expiry, queue."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest
import redis.asyncio as aioredis

from reviewstream.errors import JobFinished, JobNotFound, StoreError
from reviewstream.keys import Keys
from reviewstream.models import JobStatus, ReviewRequest
from reviewstream.store import Claim, Lease, Renewal, Requeue, Store, text_digest

REQUEST = ReviewRequest(employee_name="Ada", employee_review_points="Shipped the thing.")


@pytest.fixture(params=[1, 3], ids=["1-shard", "3-shards"])
def store(redis: aioredis.Redis, request: pytest.FixtureRequest) -> Store:
    return Store(redis, Keys("t", queue_shards=request.param), retention_seconds=2)


async def running_job(store: Store, owner: str = "w1", lease_ms: int = 5000) -> Claim:
    await store.queue.ensure_group()
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    [entry] = await store.queue.next_entries(owner, count=1, block_ms=100)
    assert entry.job_id == job_id
    claim = await store.claim(entry, owner, lease_ms=lease_ms)
    assert claim is not None and claim.owner == f"{owner}#1"
    return claim


async def test_create_queues_job_and_read_reports_it(store: Store) -> None:
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    snap = await store.jobs.read(job_id, 0, 10)
    assert snap.status is JobStatus.QUEUED
    assert (snap.tokens, snap.count, snap.done) == ([], 0, False)
    assert json.loads((await store.jobs.meta(job_id))["request"])["employee_name"] == "Ada"


async def test_unknown_job_is_not_found(store: Store) -> None:
    with pytest.raises(JobNotFound):
        await store.jobs.read("nope", 0, 10)


async def test_notification_never_precedes_its_data(store: Store, redis: aioredis.Redis) -> None:
    """Every notification's tokens are already in the list when the notification arrives."""
    claim = await running_job(store)
    job_id = claim.job_id
    pubsub = redis.pubsub()
    await pubsub.subscribe(store.keys.channel(job_id))
    checker = aioredis.Redis(connection_pool=redis.connection_pool)

    async def produce() -> None:
        for i in range(200):
            assert await store.jobs.append(job_id, claim.owner, [f" t{i}"], offset=i)

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


async def test_order_kept_under_concurrent_jobs(store: Store) -> None:
    await store.queue.ensure_group()
    claims = [await running_job(store, owner=f"w{i}") for i in range(8)]

    async def produce(i: int, claim: Claim) -> None:
        for n in range(100):
            assert await store.jobs.append(claim.job_id, claim.owner, [f"{i}:{n}"])
            if n % 7 == 0:
                await asyncio.sleep(0)

    await asyncio.gather(*(produce(i, c) for i, c in enumerate(claims)))
    for i, claim in enumerate(claims):
        snap = await store.jobs.read(claim.job_id, 0, 1000)
        assert snap.tokens == [f"{i}:{n}" for n in range(100)]
        assert len(snap.ts) == 100 and snap.ts == sorted(snap.ts)


async def test_finish_is_once_after_last_token_and_keys_expire(
    store: Store, redis: aioredis.Redis
) -> None:
    claim = await running_job(store)
    job_id, owner = claim.job_id, claim.owner
    assert await store.jobs.append(job_id, owner, ["Hello", " wörld"])
    pubsub = redis.pubsub()
    await pubsub.subscribe(store.keys.channel(job_id))
    await pubsub.get_message(timeout=1)
    assert await store.end(job_id, JobStatus.DONE, usage={"output_tokens": 2}, owner=owner)
    assert not await store.end(job_id, JobStatus.FAILED, error="late", owner=owner)
    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
    assert msg is not None
    end = json.loads(msg["data"])["end"]
    assert (end["status"], end["next_offset"], end["usage"]) == ("done", 2, {"output_tokens": 2})
    # The end proves the text: SHA-256 of the UTF-8 of the tokens, concatenated.
    assert end["sha256"] == hashlib.sha256("Hello wörld".encode()).hexdigest()
    await pubsub.aclose()
    # Appends after the end are refused: a late producer cannot add to a finished stream.
    assert not await store.jobs.append(job_id, owner, ["!"])
    snap = await store.jobs.read(job_id, 0, 10)
    assert snap.done and snap.tokens == ["Hello", " wörld"]
    assert snap.sha256 == end["sha256"] and snap.end().sha256 == end["sha256"]
    for key in (store.keys.meta(job_id), store.keys.chunks(job_id), store.keys.times(job_id)):
        assert 0 < await redis.ttl(key) <= 2
    await asyncio.sleep(2.2)
    with pytest.raises(JobNotFound):
        await store.jobs.read(job_id, 0, 10)


async def test_foreign_owner_cannot_append_or_finish(store: Store) -> None:
    claim = await running_job(store, owner="w1")
    job_id = claim.job_id
    for intruder in ("intruder", "w1", "w1#2"):  # the bare worker name is not the owner either
        assert not await store.jobs.append(job_id, intruder, ["x"])
        assert not await store.end(job_id, JobStatus.DONE, owner=intruder)
    assert (await store.jobs.read(job_id, 0, 10)).status is JobStatus.RUNNING


async def test_cancel_ends_job_and_second_cancel_conflicts(store: Store) -> None:
    claim = await running_job(store)
    await store.cancel(claim.job_id)
    snap = await store.jobs.read(claim.job_id, 0, 10)
    assert snap.status is JobStatus.CANCELLED and snap.done
    with pytest.raises(JobFinished):
        await store.cancel(claim.job_id)
    assert await store.renew(claim, 1000) is Renewal.LOST


async def test_append_retried_after_a_lost_reply_stores_nothing_twice(store: Store) -> None:
    claim = await running_job(store)
    assert await store.jobs.append(claim.job_id, claim.owner, ["a", "b"], offset=0)
    assert await store.jobs.append(claim.job_id, claim.owner, ["a", "b"], offset=0)  # the retry
    assert await store.jobs.append(claim.job_id, claim.owner, ["c"], offset=2)
    with pytest.raises(StoreError, match="does not hold 7 tokens"):
        await store.jobs.append(claim.job_id, claim.owner, ["x"], offset=7)
    assert (await store.jobs.read(claim.job_id, 0, 10)).tokens == ["a", "b", "c"]


async def test_lapsed_lease_requeues_and_next_attempt_fences_the_old_one(
    store: Store, redis: aioredis.Redis
) -> None:
    first = await running_job(store, lease_ms=100)
    job_id = first.job_id
    assert await store.jobs.append(job_id, first.owner, ["Once", " upon"], offset=0)
    assert await store.queue.lapsed_leases() == []
    pubsub = redis.pubsub()
    await pubsub.subscribe(store.keys.channel(job_id))
    await pubsub.get_message(timeout=1)
    await asyncio.sleep(0.15)
    assert await store.queue.lapsed_leases() == [Lease(job_id, 1, first.shard)]
    lost = "worker lost"
    outcome, _ = await store.requeue(job_id, lost, max_attempts=3, only_if_lease_lapsed=True)
    assert outcome is Requeue.QUEUED
    # Exactly one reaper acts on a lapse.
    again, _ = await store.requeue(job_id, lost, max_attempts=3, only_if_lease_lapsed=True)
    assert again is Requeue.NOTHING
    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
    assert msg is not None
    assert json.loads(msg["data"]) == {
        "status": {"status": "queued", "attempt": 1, "offset": 2, "reason": lost}
    }
    snap = await store.jobs.read(job_id, 0, 10)
    assert (snap.status, snap.attempts, snap.tokens) == (JobStatus.QUEUED, 1, ["Once", " upon"])

    [entry] = await store.queue.next_entries("w2", count=1, block_ms=100)
    second = await store.claim(entry, "w2", lease_ms=5000)
    assert second == Claim(job_id, 2, "w2#2", 2, first.shard)
    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
    assert msg is not None
    assert json.loads(msg["data"]) == {"status": {"status": "running", "attempt": 2, "offset": 2}}
    # The first attempt's producer comes back: it can neither write, renew nor end the job.
    assert not await store.jobs.append(job_id, first.owner, ["!"], offset=2)
    assert await store.renew(first, 5000) is Renewal.LOST
    assert not await store.end(job_id, JobStatus.DONE, owner=first.owner)
    assert await store.jobs.append(job_id, second.owner, [" a", " time"], offset=2)
    assert await store.end(job_id, JobStatus.DONE, owner=second.owner)
    snap = await store.jobs.read(job_id, 0, 10)
    assert (snap.status, snap.attempts) == (JobStatus.DONE, 2)
    assert snap.sha256 == text_digest(["Once", " upon", " a", " time"])
    await pubsub.aclose()


async def test_requeue_when_attempts_are_spent_names_every_cause(store: Store) -> None:
    claim = await running_job(store)
    outcome, causes = await store.requeue(claim.job_id, "first cause", max_attempts=2)
    assert outcome is Requeue.QUEUED and causes == []
    [entry] = await store.queue.next_entries("w2", count=1, block_ms=100)
    second = await store.claim(entry, "w2", lease_ms=5000)
    assert second is not None and second.attempt == 2
    # Someone else's attempt token does not let the job go.
    outcome, _ = await store.requeue(claim.job_id, "x", max_attempts=2, owner=claim.owner)
    assert outcome is Requeue.NOTHING
    outcome, causes = await store.requeue(
        claim.job_id, "second cause", max_attempts=2, owner=second.owner
    )
    assert outcome is Requeue.SPENT
    assert causes == ["attempt 1: first cause", "attempt 2: second cause"]
    # Spent: the job failed, naming every cause, and nothing of it is left in the queue.
    snap = await store.jobs.read(claim.job_id, 0, 1)
    assert snap.status is JobStatus.FAILED
    assert snap.error == "gave up after 2 attempts: attempt 1: first cause; attempt 2: second cause"
    assert await store.queue.queue_length() == 0 and await store.queue.lapsed_leases(limit=10) == []
    with pytest.raises(JobNotFound):
        await store.requeue("nope", "x", max_attempts=2)


async def test_renew_reports_an_abandoned_job(store: Store) -> None:
    claim = await running_job(store)
    assert await store.renew(claim, 5000, abandon_ms=10_000) is Renewal.RENEWED
    await asyncio.sleep(0.1)
    assert await store.renew(claim, 5000, abandon_ms=50) is Renewal.ABANDONED
    await store.jobs.seen([claim.job_id])
    assert await store.renew(claim, 5000, abandon_ms=50) is Renewal.RENEWED


async def test_entry_of_dead_consumer_is_reclaimed(store: Store) -> None:
    await store.queue.ensure_group()
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    [entry] = await store.queue.next_entries("dead", count=1, block_ms=100)
    assert await store.queue.reclaim_entries("alive", min_idle_ms=10_000, count=5) == []
    await asyncio.sleep(0.05)
    [again] = await store.queue.reclaim_entries("alive", min_idle_ms=10, count=5)
    assert again == entry
    assert await store.claim(again, "alive", lease_ms=1000) is not None
    # Claimed entries are gone from the queue: nothing left to reclaim.
    await asyncio.sleep(0.05)
    assert await store.queue.reclaim_entries("other", min_idle_ms=10, count=5) == []
    assert (await store.jobs.read(job_id, 0, 1)).status is JobStatus.RUNNING


async def test_scripts_survive_a_redis_script_flush(store: Store, redis: aioredis.Redis) -> None:
    """A restarted (or flushed) Redis forgets loaded scripts: the store loads them again."""
    claim = await running_job(store)
    job_id = claim.job_id
    assert await store.jobs.append(job_id, claim.owner, [" one"])
    await redis.script_flush()
    assert await store.jobs.append(job_id, claim.owner, [" two"])
    await redis.script_flush()
    assert await store.end(job_id, JobStatus.DONE, owner=claim.owner)
    snap = await store.jobs.read(job_id, 0, 10)
    assert snap.tokens == [" one", " two"] and snap.done


async def test_a_cancellation_during_an_operation_always_stops_the_task(store: Store) -> None:
    """redis-py on Python 3.11 can swallow a cancellation that meets a command's send (its
    ``asyncio.wait_for``): the store raises it all the same, so a lease guard or a reaper asked
    to stop never runs on."""
    claim = await running_job(store)

    async def guard() -> str:
        while True:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                return "ran on though cancelled"
            await store.renew(claim, 5000)

    outcomes = []
    for i in range(100):
        task = asyncio.create_task(guard())
        await asyncio.sleep(0.00003 * i)  # cancellations land all through the commands
        task.cancel()
        try:
            outcomes.append(await task)
        except asyncio.CancelledError:
            outcomes.append("stopped")
    assert outcomes == ["stopped"] * 100
