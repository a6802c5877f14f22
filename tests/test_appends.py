"""A worker's group commit (``workers.appends``) and its clock (``workers.clock``), on a real
Redis: one round trip per flush, each job's tokens in order and exactly once through cut
connections, fencing per job, and token times on the Redis clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from reviewstream.errors import StoreError
from reviewstream.keys import Keys
from reviewstream.models import Batch, ReviewRequest
from reviewstream.store import Append, Claim, Lane, Renewal, Store, appended
from reviewstream.store.notices import parse_notice
from reviewstream.workers.appends import Appends
from reviewstream.workers.clock import RedisClock

from tests.support.cuttable import CuttableProxy

REQUEST = ReviewRequest(employee_name="Ada", employee_review_points="Shipped the thing.")


@pytest.fixture
def store(redis: aioredis.Redis) -> Store:
    return Store(redis, Keys("t", queue_shards=1), retention_seconds=60)


async def running_jobs(store: Store, n: int) -> list[Claim]:
    await store.queue.ensure_group()
    for _ in range(n):
        await store.create(REQUEST, provider="simulated", model="sim-default")
    claims = []
    for entry in await store.queue.next_entries("w", count=n, block_ms=100):
        claim = await store.claim(entry, "w", lease_ms=5000)
        assert claim is not None
        claims.append(claim)
    assert len(claims) == n
    return claims


@pytest.fixture
async def appends(store: Store) -> AsyncIterator[Appends]:
    group = Appends(store.jobs, time.time, flush_ms=2, outage_seconds=10)
    group.start()
    yield group
    await group.aclose()


async def commands(redis: aioredis.Redis, name: str) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


async def test_tokens_of_many_jobs_go_in_one_round_trip_one_call_per_job(
    store: Store, redis: aioredis.Redis, appends: Appends
) -> None:
    claims = await running_jobs(store, 10)
    writers = [appends.writer(claim) for claim in claims]
    writers[0].put("0-warm ")  # Redis learns the script
    assert await writers[0].drain()
    flushes = appends.flushes
    before = await commands(redis, "evalsha") + await commands(redis, "eval")
    for i in range(3):  # in one turn of the loop: one flush carries them all
        for writer in writers:
            assert writer.put(f"{writer.claim.job_id[:4]}-{i} ")
    assert all([await w.drain() for w in writers])
    assert appends.flushes == flushes + 1
    calls = await commands(redis, "evalsha") + await commands(redis, "eval") - before
    assert calls == len(claims)  # one APPEND per job, all three tokens in it
    for claim in claims:
        snap = await store.jobs.read(claim.job_id, 0, 10)
        warm = ["0-warm "] if claim is claims[0] else []
        assert snap.tokens == [*warm, *(f"{claim.job_id[:4]}-{i} " for i in range(3))]


async def test_one_notice_per_job_per_flush_carries_its_tokens_and_times(
    store: Store, redis: aioredis.Redis, appends: Appends
) -> None:
    [claim] = await running_jobs(store, 1)
    pubsub = redis.pubsub()
    await pubsub.subscribe(store.keys.channel(claim.job_id))
    await pubsub.get_message(timeout=1)  # the confirmation
    writer = appends.writer(claim)
    for token in ("a", "b", "c"):
        writer.put(token)
    assert await writer.drain()
    message = await pubsub.get_message(timeout=1)
    await pubsub.aclose()
    assert message is not None
    batch = parse_notice(message["data"])
    assert isinstance(batch, Batch)
    assert batch.offset == 0 and batch.tokens == ["a", "b", "c"]
    assert len(batch.ts) == 3 and batch.ts == sorted(batch.ts)
    assert batch.ts == (await store.jobs.read(claim.job_id, 0, 10)).ts


async def test_a_lone_token_is_flushed_without_waiting_for_the_interval(store: Store) -> None:
    [claim] = await running_jobs(store, 1)
    group = Appends(store.jobs, time.time, flush_ms=60_000, outage_seconds=10)
    group.start()
    try:
        writer = group.writer(claim)
        writer.put("alone")
        async with asyncio.timeout(1):
            assert await writer.drain()
    finally:
        await group.aclose()
    assert (await store.jobs.read(claim.job_id, 0, 10)).tokens == ["alone"]


async def test_tokens_put_within_the_interval_after_a_flush_go_in_the_next_one(
    store: Store,
) -> None:
    [claim] = await running_jobs(store, 1)
    group = Appends(store.jobs, time.time, flush_ms=300, outage_seconds=10)
    group.start()
    try:
        writer = group.writer(claim)
        writer.put("first")
        assert await writer.drain()
        assert group.flushes == 1
        for word in (" a", " b", " c", " d"):  # well within the 300 ms after the first flush
            writer.put(word)
            await asyncio.sleep(0.01)
        assert await writer.drain()
        assert group.flushes == 2
    finally:
        await group.aclose()
    assert (await store.jobs.read(claim.job_id, 0, 10)).tokens == ["first", " a", " b", " c", " d"]


async def test_a_fenced_attempt_is_refused_and_the_other_jobs_of_the_flush_go_through(
    store: Store, appends: Appends
) -> None:
    kept, cancelled = await running_jobs(store, 2)
    await store.cancel(cancelled.job_id)
    ours, stale = appends.writer(kept), appends.writer(cancelled)
    assert ours.put("kept") and stale.put("lost")
    assert await ours.drain() is True
    assert await stale.drain() is False
    assert stale.put("more") is False  # its producer learns it at its next token
    assert (await store.jobs.read(kept.job_id, 0, 10)).tokens == ["kept"]
    assert (await store.jobs.read(cancelled.job_id, 0, 10)).tokens == []


async def test_order_and_exactly_once_when_flushes_fail_and_are_retried(
    redis_url: str, store: Store
) -> None:
    """Connections cut mid-flush, again and again: every job ends with every token once and
    in order (a retried append stores only what Redis does not hold yet)."""
    claims = await running_jobs(store, 5)
    proxy = CuttableProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    url = await proxy.start()
    cut_redis = aioredis.Redis.from_url(url.replace("http", "redis"), decode_responses=True)
    cut_store = Store(cut_redis, store.keys, retention_seconds=60)
    group = Appends(cut_store.jobs, time.time, flush_ms=0, outage_seconds=30)
    group.start()
    try:
        writers = [group.writer(claim) for claim in claims]
        for i in range(200):
            for writer in writers:
                assert writer.put(f"{i} ")
            await asyncio.sleep(0.002)
            if i % 25 == 7:
                proxy.cut()
        async with asyncio.timeout(20):
            assert all([await w.drain() for w in writers])
    finally:
        await group.aclose()
        await cut_redis.aclose()
        await proxy.aclose()
    for claim in claims:
        assert (await store.jobs.read(claim.job_id, 0, 1000)).tokens == [
            f"{i} " for i in range(200)
        ]


async def test_a_writer_gives_up_after_the_outage_window(store: Store) -> None:
    [claim] = await running_jobs(store, 1)
    dead = aioredis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    dead_store = Store(dead, store.keys, retention_seconds=60)
    group = Appends(dead_store.jobs, time.time, flush_ms=0, outage_seconds=0.2)
    group.start()
    try:
        writer = group.writer(claim)
        writer.put("x")
        with pytest.raises(StoreError):
            async with asyncio.timeout(5):
                await writer.drain()
        with pytest.raises(StoreError):
            writer.put("y")
    finally:
        await group.aclose()
        await dead.aclose()


async def test_token_times_are_monotonic_per_job_and_on_the_redis_clock(
    store: Store, redis: aioredis.Redis
) -> None:
    """Stamped when put, on the worker's clock corrected to Redis' by a heartbeat; a clock that
    steps back never makes a job's times go back."""
    [claim] = await running_jobs(store, 1)
    clock = RedisClock()
    clock.offset = 1000.0  # a worker clock far off Redis': the heartbeat mends it
    sent = time.time()
    redis_time = await store.workers.heartbeat("w", 60_000)
    clock.measured(redis_time, sent, time.time())
    group = Appends(store.jobs, clock.now, flush_ms=1, outage_seconds=10)
    group.start()
    try:
        writer = group.writer(claim)
        seconds, micros = await redis.time()
        before = seconds + micros / 1e6
        for i in range(20):
            writer.put(f"{i}")
            if i == 10:
                clock.offset -= 5.0  # the clock steps back
            await asyncio.sleep(0.005)
        assert await writer.drain()
        seconds, micros = await redis.time()
        after = seconds + micros / 1e6
    finally:
        await group.aclose()
    ts = (await store.jobs.read(claim.job_id, 0, 100)).ts
    assert len(ts) == 20 and ts == sorted(ts)
    assert before - 0.05 <= ts[0] and ts[10] <= after + 0.05
    assert ts[10] - ts[0] >= 0.04  # stamped when put, 5 ms apart, not all at the flush


async def test_renew_all_renews_each_attempt_in_two_round_trips(
    store: Store, redis: aioredis.Redis
) -> None:
    renewed, cancelled, requeued = await running_jobs(store, 3)
    await store.cancel(cancelled.job_id)
    await store.requeue(requeued.job_id, "test", max_attempts=3)
    found = await store.renew_all([renewed, cancelled, requeued], lease_ms=5000)
    assert found == [Renewal.RENEWED, Renewal.LOST, Renewal.LOST]


async def test_renew_all_waits_for_no_master_past_a_sixth_of_the_lease(
    store: Store, redis: aioredis.Redis
) -> None:
    """A master that does not answer (down and retried, here paused) fails its own renewals
    in time for the others' to be retried before their leases lapse, instead of holding them."""
    claims = await running_jobs(store, 2)
    await redis.client_pause(4000, all=False)  # writes (the scripts) wait
    try:
        async with asyncio.timeout(2):  # unbounded, the renewals would wait the whole pause
            found = await store.renew_all(claims, lease_ms=3000)
    finally:
        await redis.client_unpause()
    assert all(isinstance(f, StoreError) and "in time" in str(f) for f in found), found
    assert await store.renew_all(claims, lease_ms=3000) == [Renewal.RENEWED] * 2


async def test_a_silent_redis_fails_a_flush_at_the_read_timeout_and_the_lane_goes_on(
    redis_url: str, store: Store
) -> None:
    """Redis stops answering mid-flush: the round trip fails at the connection's read timeout
    (one timeout for all its replies), not when Redis answers again; the flusher's held
    connection reconnects for the next flush, and the retry at the same offset stores the
    token once."""
    [claim] = await running_jobs(store, 1)
    slow = aioredis.Redis.from_url(
        redis_url, decode_responses=True, socket_timeout=0.3, retry=Retry(NoBackoff(), 0)
    )
    jobs = Store(slow, store.keys, retention_seconds=60).jobs
    lane = Lane(slow)
    append = Append(claim.job_id, claim.owner, claim.offset, ["a "], [f"{time.time():.6f}"])
    try:
        await lane.connection()  # connected before Redis goes silent
        # Writes held (a script is one): the APPEND waits unanswered, CLIENT UNPAUSE goes on.
        await store.redis.client_pause(10_000, all=False)
        try:
            [reply] = await jobs.append_batch([append], lane=lane)
        finally:
            await store.redis.client_unpause()
        assert isinstance(reply, StoreError)
        [reply] = await jobs.append_batch([append], lane=lane)
        assert appended(claim.job_id, reply, claim.offset)
    finally:
        await lane.aclose()
        await slow.aclose()
    assert (await store.jobs.read(claim.job_id, 0, 10)).tokens == ["a "]
