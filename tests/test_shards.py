"""Queue shards: every script and transaction touches one Redis Cluster slot, and each
transition split into a job step and a shard step is completed when a process dies between the
two (simulated by running the first step alone), with no job stuck and no token written twice.

All on the suite's single redis-server, with one queue shard and with three.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from reviewstream.admission import Admission
from reviewstream.errors import JobNotFound, StoreError
from reviewstream.hub import Hub
from reviewstream.keys import Keys
from reviewstream.models import JobStatus, ReviewRequest
from reviewstream.settings import Settings
from reviewstream.store import (
    Claim,
    Lease,
    Renewal,
    Requeue,
    Script,
    Store,
    new_job_id,
    text_digest,
)
from reviewstream.store.scripts.jobs import AttemptStart
from reviewstream.tenancy import Principal
from reviewstream.web import create_app, server_options
from reviewstream.workers import Reaper, Worker

from tests.support import followers as fl
from tests.support.procs import environment, start, stop_all
from tests.support.servers import serve
from tests.support.slots import SlotCheck

REQUEST = ReviewRequest(employee_name="Barbara Liskov", employee_review_points="Substitution.")
REVIEW = {"employee_name": "Barbara Liskov", "employee_review_points": "Substitution."}
LOST = "worker lost: its lease lapsed before the job finished"


def ids_on_every_shard(keys: Keys) -> list[str]:
    """One job id placed on each shard, in shard order."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < keys.queue_shards:
        job_id = f"job-{n}"
        found.setdefault(keys.shard_of(job_id), job_id)
        n += 1
    return [found[shard] for shard in keys.shards]


@pytest.fixture(params=[1, 3], ids=["1-shard", "3-shards"])
def tuned(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    return settings.model_copy(
        update={"queue_shards": request.param, "lease_seconds": 0.5, "claim_idle_seconds": 0.3}
    )


@pytest.fixture
def store(redis: aioredis.Redis, tuned: Settings) -> Store:
    return Store(redis, Keys(tuned.key_prefix, tuned.queue_shards), retention_seconds=60)


@contextlib.asynccontextmanager
async def running(store: Store, settings: Settings) -> AsyncIterator[Worker]:
    """A worker and a reaper on ``store``, as a worker process runs them."""
    hub = Hub(store.redis, store.keys, store.jobs)
    await hub.start()
    reaper = Reaper(store, settings)
    await reaper.start()
    try:
        async with httpx.AsyncClient() as http:
            worker = Worker(store, hub, settings, http, grace_seconds=0.2)
            await worker.start()
            try:
                yield worker
            finally:
                await worker.aclose()
    finally:
        await reaper.aclose()
        await hub.aclose()


async def until(store: Store, job_id: str, predicate: Any, timeout: float) -> float:
    """Seconds until ``predicate(snapshot)`` holds; fails after ``timeout``."""
    start = time.monotonic()
    while True:
        snap = await store.jobs.read(job_id, 0, 100_000)
        if predicate(snap):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            pytest.fail(f"job {job_id} did not get there in {timeout}s: {snap}")
        await asyncio.sleep(0.02)


async def claim_next(store: Store, worker: str = "w1", lease_ms: int = 5000) -> Claim:
    await store.queue.ensure_group()
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    [entry] = await store.queue.next_entries(worker, 1, 100, shard=store.keys.shard_of(job_id))
    claim = await store.claim(entry, worker, lease_ms)
    assert claim is not None and claim.job_id == job_id
    return claim


async def lease_deadline(store: Store, lease: Lease) -> float | None:
    score = await store.redis.zscore(store.keys.leases(lease.shard), lease.member)
    return None if score is None else float(score)


async def causes(store: Store, job_id: str) -> list[str]:
    return list(json.loads((await store.jobs.meta(job_id)).get("causes") or "[]"))


# -- placement --------------------------------------------------------------------------------


async def test_jobs_spread_over_the_shards_and_workers_read_every_one(
    store: Store, tuned: Settings
) -> None:
    keys = store.keys
    ids = ids_on_every_shard(keys)
    for job_id in ids:
        await store.create(REQUEST, provider="simulated", model="sim-default", job_id=job_id)
    for shard, job_id in zip(keys.shards, ids, strict=True):
        assert (await store.jobs.meta(job_id))["shard"] == str(shard)
        assert await store.redis.xlen(keys.queue(shard)) == 1
    assert await store.queue.queue_length() == len(ids)
    async with running(store, tuned):
        for job_id in ids:
            await until(store, job_id, lambda s: s.status is JobStatus.DONE, 20)
    assert await store.queue.queue_length() == 0 and await store.queue.lapsed_leases() == []


async def test_jobs_on_every_shard_outlive_a_killed_worker_process(
    settings: Settings, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """``reviewstream worker`` processes on three shards: one is SIGKILLed mid-stream, another
    continues each of its jobs after the stored text."""
    keys = Keys(settings.key_prefix, 3)
    store = Store(redis, keys, retention_seconds=60)
    env = environment(
        str(settings.redis_url),
        {
            "queue_shards": "3",
            "sim_tokens_per_second": "30",
            "lease_seconds": "1.0",
            "reap_interval_seconds": "0.1",
            "claim_idle_seconds": "1.0",
        },
    )
    ids = ids_on_every_shard(keys)
    for job_id in ids:
        await store.create(REQUEST, provider="simulated", model="sim-default", job_id=job_id)
    started = [await start("worker-1", ["worker"], env, tmp_path)]
    try:
        for job_id in ids:
            await until(store, job_id, lambda s: len(s.tokens) >= 3, 30)
        started[0].proc.send_signal(signal.SIGKILL)
        await started[0].proc.wait()
        before = {j: (await store.jobs.read(j, 0, 100_000)).tokens for j in ids}
        started.append(await start("worker-2", ["worker"], env, tmp_path))
        for job_id in ids:
            await until(store, job_id, lambda s: s.status.terminal, 60)
    finally:
        await stop_all(started)
    for job_id in ids:
        snap = await store.jobs.read(job_id, 0, 100_000)
        assert (snap.status, snap.attempts) == (JobStatus.DONE, 2), snap
        assert snap.tokens[: len(before[job_id])] == before[job_id]
        assert snap.sha256 == text_digest(snap.tokens)
        assert "Barbara Liskov" in "".join(snap.tokens)
    assert await store.queue.queue_length() == 0 and await store.queue.lapsed_leases() == []


# -- create: the job's meta, then its entry -----------------------------------------------------


async def test_a_job_whose_entry_was_never_added_expires(store: Store) -> None:
    job_id = new_job_id()
    await store.jobs.write(
        job_id,
        REQUEST,
        provider="simulated",
        model="sim-default",
        tenant="",
        shard=store.keys.shard_of(job_id),
        ttl_seconds=0.3,
    )
    # The creating process died here: a queued job that no entry names.
    assert (await store.jobs.read(job_id, 0, 1)).status is JobStatus.QUEUED
    assert await store.queue.queue_length() == 0
    await asyncio.sleep(0.4)
    with pytest.raises(JobNotFound):
        await store.jobs.read(job_id, 0, 1)


async def test_a_claimed_job_no_longer_expires(store: Store) -> None:
    await store.queue.ensure_group()
    job_id = await store.create(
        REQUEST, provider="simulated", model="sim-default", unclaimed_ttl_seconds=1.0
    )
    assert 0 < await store.redis.pttl(store.keys.meta(job_id)) <= 1000
    [entry] = await store.queue.next_entries("w", 1, 100, shard=store.keys.shard_of(job_id))
    assert await store.claim(entry, "w", 5000) is not None
    assert await store.redis.pttl(store.keys.meta(job_id)) == -1
    await asyncio.sleep(1.05)
    assert (await store.jobs.read(job_id, 0, 1)).status is JobStatus.RUNNING


async def test_a_job_whose_entry_cannot_be_added_fails(store: Store) -> None:
    job_id = new_job_id()
    # The shard's queue key holds a string: XADD fails (WRONGTYPE), as when its node fails.
    await store.redis.set(store.keys.queue(store.keys.shard_of(job_id)), "not a stream")
    with pytest.raises(StoreError):
        await store.create(REQUEST, provider="simulated", model="sim-default", job_id=job_id)
    snap = await store.jobs.read(job_id, 0, 1)
    assert snap.status is JobStatus.FAILED and "could not be queued" in (snap.error or "")


# -- claim: the job starts the attempt, then the shard drops the entry and adds the lease -------


async def test_an_entry_delivered_twice_starts_one_attempt(store: Store) -> None:
    await store.queue.ensure_group()
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    [entry] = await store.queue.next_entries("w1", 1, 100, shard=store.keys.shard_of(job_id))
    first = await store.claim(entry, "w1", 5000)
    assert first is not None
    assert await store.claim(entry, "w2", 5000) is None  # a slow worker's copy of the entry
    assert (await store.jobs.meta(job_id))["owner"] == "w1#1"
    assert await lease_deadline(store, first.lease) is not None


async def test_a_claim_cut_after_its_job_side_is_completed_by_the_next_claim(
    store: Store, tuned: Settings
) -> None:
    await store.queue.ensure_group()
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    [entry] = await store.queue.next_entries("dead", 1, 100, shard=store.keys.shard_of(job_id))
    assert (await store.jobs.start_attempt(entry, "dead"))[0] is AttemptStart.STARTED
    # The worker died here: attempt 1 runs nowhere, has no lease, and its entry is pending.
    assert (await store.jobs.read(job_id, 0, 1)).status is JobStatus.RUNNING
    assert await lease_deadline(store, Lease(job_id, 1, entry.shard)) is None
    async with running(store, tuned):
        took = await until(store, job_id, lambda s: s.status.terminal, 20)
    snap = await store.jobs.read(job_id, 0, 100_000)
    assert (snap.status, snap.attempts) == (JobStatus.DONE, 2)
    assert snap.sha256 == text_digest(snap.tokens)
    assert await causes(store, job_id) == [f"attempt 1: {LOST}"]
    # Taken over after claim_idle, given its lease, which lapsed and was reaped; then the run.
    s = tuned
    assert took < s.claim_idle_seconds + s.lease_seconds + 4 * s.reap_interval_seconds + 5.0
    assert await store.queue.queue_length() == 0 and await store.queue.lapsed_leases() == []


async def test_an_old_entry_whose_claim_was_cut_gives_the_attempt_its_lease(
    store: Store, tuned: Settings
) -> None:
    """The queued-timeout reaper drops old entries, but not the only trace of a cut claim."""
    await store.queue.ensure_group()
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    [entry] = await store.queue.next_entries("dead", 1, 100, shard=store.keys.shard_of(job_id))
    assert (await store.jobs.start_attempt(entry, "dead"))[0] is AttemptStart.STARTED
    await asyncio.sleep(0.1)
    reaper = Reaper(store, tuned.model_copy(update={"queued_timeout_seconds": 0.05}))
    assert await reaper.reap_queued() == []  # it was not queued any more: not failed
    assert await store.queue.queue_length() == 0
    assert await lease_deadline(store, Lease(job_id, 1, entry.shard)) is not None
    await asyncio.sleep(tuned.lease_seconds + 0.05)
    assert await reaper.reap_leases() == [job_id]  # the lease lapsed: attempt 2 is queued
    assert (await store.jobs.read(job_id, 0, 1)).status is JobStatus.QUEUED


# -- losing an attempt: the shard takes the lease and adds the entry, then the job is queued ----


async def test_a_lapse_cut_after_its_shard_side_is_completed_by_the_claim_of_its_entry(
    store: Store, tuned: Settings, redis: aioredis.Redis
) -> None:
    claim = await claim_next(store)
    job_id = claim.job_id
    assert await store.jobs.append(job_id, claim.owner, ["Once", " upon"], offset=0)
    pubsub = redis.pubsub()
    await pubsub.subscribe(store.keys.channel(job_id))
    await pubsub.get_message(timeout=1)
    entry = await store.queue.take_lease(claim.lease, "worker lost")
    assert entry is not None and (entry.attempt, entry.cause) == (1, "worker lost")
    assert await store.queue.take_lease(claim.lease, "worker lost") is None  # exactly one winner
    # The reaper died here: the job still says running, but its producer's lease is gone.
    assert (await store.jobs.read(job_id, 0, 1)).status is JobStatus.RUNNING
    assert await store.renew(claim, 5000) is Renewal.LOST
    async with running(store, tuned):
        await until(store, job_id, lambda s: s.status.terminal, 20)
    snap = await store.jobs.read(job_id, 0, 100_000)
    assert (snap.status, snap.attempts) == (JobStatus.DONE, 2)
    assert snap.tokens[:2] == ["Once", " upon"] and snap.sha256 == text_digest(snap.tokens)
    assert await causes(store, job_id) == ["attempt 1: worker lost"]
    assert not await store.jobs.append(job_id, claim.owner, ["!"])  # the old attempt is fenced off
    notices = []
    while msg := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2):
        if "status" in (data := json.loads(msg["data"])):
            notices.append(data["status"])
    await pubsub.aclose()
    assert notices == [
        {"status": "queued", "attempt": 1, "offset": 2, "reason": "worker lost"},
        {"status": "running", "attempt": 2, "offset": 2},
    ]


async def test_a_cut_lapse_of_a_job_whose_attempts_are_spent_ends_it_failed(
    store: Store,
) -> None:
    claim = await claim_next(store)
    entry = await store.queue.take_lease(claim.lease, "worker lost")
    assert entry is not None
    assert await store.claim(entry, "w2", 5000, max_attempts=1) is None
    snap = await store.jobs.read(claim.job_id, 0, 1)
    assert snap.status is JobStatus.FAILED
    assert snap.error == "gave up after 1 attempt: attempt 1: worker lost"
    assert await store.queue.queue_length() == 0 and await store.queue.lapsed_leases() == []


async def test_a_cut_lapse_nobody_claims_fails_at_the_queued_timeout(
    store: Store, tuned: Settings
) -> None:
    claim = await claim_next(store)
    assert await store.queue.take_lease(claim.lease, "worker lost") is not None
    await asyncio.sleep(0.1)
    reaper = Reaper(store, tuned.model_copy(update={"queued_timeout_seconds": 0.05}))
    assert await reaper.reap_queued() == [claim.job_id]
    snap = await store.jobs.read(claim.job_id, 0, 1)
    assert snap.status is JobStatus.FAILED and "no worker started" in (snap.error or "")
    assert await store.queue.queue_length() == 0


async def test_concurrent_reapers_requeue_each_lapsed_job_once(
    store: Store, tuned: Settings
) -> None:
    claims = [await claim_next(store, lease_ms=50) for _ in range(4)]
    await asyncio.sleep(0.1)
    reapers = [Reaper(store, tuned) for _ in range(5)]
    acted = await asyncio.gather(*(r.reap_leases() for r in reapers))
    assert sorted(j for each in acted for j in each) == sorted(c.job_id for c in claims)
    assert await store.queue.queue_length() == len(claims)
    for claim in claims:
        snap = await store.jobs.read(claim.job_id, 0, 1)
        assert (snap.status, snap.attempts) == (JobStatus.QUEUED, 1)
        assert await causes(store, claim.job_id) == [f"attempt 1: {LOST}"]


async def test_a_stale_owner_cannot_let_a_later_attempt_go(store: Store) -> None:
    first = await claim_next(store)
    outcome, _ = await store.requeue(first.job_id, "x", max_attempts=3, owner=first.owner)
    assert outcome is Requeue.QUEUED
    [entry] = await store.queue.next_entries("w2", 1, 100, shard=first.shard)
    second = await store.claim(entry, "w2", 5000)
    assert second is not None and second.attempt == 2
    for owner, attempt in ((first.owner, None), ("", 1), (first.owner, 1)):
        outcome, _ = await store.requeue(
            first.job_id, "stale", max_attempts=3, owner=owner, attempt=attempt
        )
        assert outcome is Requeue.NOTHING
    assert await lease_deadline(store, second.lease) is not None
    assert await store.renew(second, 5000) is Renewal.RENEWED


# -- finish: the job ends, then the shard drops the lease ---------------------------------------


async def test_a_finish_cut_after_its_job_side_leaves_a_lease_the_reaper_drops(
    store: Store, tuned: Settings
) -> None:
    claim = await claim_next(store, lease_ms=200)
    assert await store.jobs.append(claim.job_id, claim.owner, ["Done."], offset=0)
    ended, lease = await store.jobs.end(claim.job_id, JobStatus.DONE, owner=claim.owner)
    assert ended and lease == claim.lease
    # The worker died here: the ended job's lease is left behind.
    assert await lease_deadline(store, lease) is not None
    reaper = Reaper(store, tuned)
    await reaper.start()
    try:
        start = time.monotonic()
        while await lease_deadline(store, lease) is not None:
            assert time.monotonic() - start < 0.2 + 3 * tuned.reap_interval_seconds + 1.0
            await asyncio.sleep(0.02)
    finally:
        await reaper.aclose()
    snap = await store.jobs.read(claim.job_id, 0, 10)
    assert (snap.status, snap.attempts, snap.tokens) == (JobStatus.DONE, 1, ["Done."])
    assert await store.queue.queue_length() == 0  # dropped, not requeued


# -- one slot per script ------------------------------------------------------------------------


@pytest.fixture
def slot_check(redis_url: str) -> Iterator[SlotCheck]:
    check = SlotCheck(redis_url)
    with check.watching():
        yield check
    check.close()


async def test_the_slot_check_catches_a_call_over_two_slots(
    redis: aioredis.Redis, slot_check: SlotCheck
) -> None:
    await redis.eval("return 1", 2, "rs:{a}:x", "rs:{a}:y")
    async with redis.pipeline(transaction=True) as pipe:
        pipe.get("rs:{a}:x")
        pipe.get("rs:{a}:y")
        await pipe.execute()
    assert slot_check.violations == []
    # The keys of the CLAIM script before queue shards: the job's meta and the global queue.
    await redis.eval("return 1", 2, "rs:{job}:meta", "rs:queue")
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset("rs:{job}:meta", "status", "queued")
        pipe.xadd("rs:queue", {"job": "job"})
        await pipe.execute()
    assert len(slot_check.violations) == 2


def script_shas(*holders: object) -> set[str]:
    return {v.sha for h in holders for v in vars(h).values() if isinstance(v, Script)}


async def test_every_script_and_transaction_touches_one_slot(
    redis: aioredis.Redis, settings: Settings, slot_check: SlotCheck
) -> None:
    values = {
        **settings.model_dump(),
        "queue_shards": 3,
        "api_keys": "alice:key-alice",
        "max_active_jobs_per_key": 50,
        "jobs_per_minute_per_key": 100,
        "max_streams_per_key": 20,
        "max_open_durable_streams_per_key": 5,
        "durable_streams_per_minute_per_key": 50,
        "abandon_seconds": 30.0,
        "worker_grace_seconds": 0.2,
    }
    s = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    keys = Keys(s.key_prefix, s.queue_shards)
    store = Store(redis, keys, retention_seconds=60)
    admission = Admission(store, s)
    await store.queue.ensure_group()
    await store.workers.heartbeat("w", 60_000)
    assert await store.workers.workers_alive(10_000) == 1
    await store.workers.shared_secret()
    await admission.check_capacity()

    # Every step of every transition, on every shard.
    ids = ids_on_every_shard(keys)
    for job_id in ids:
        await admission.admit(Principal("alice"), job_id)
        await store.create(REQUEST, provider="simulated", model="sim-default", job_id=job_id)
    claims = []
    for shard in keys.shards:
        [entry] = await store.queue.next_entries("w", 1, 100, shard=shard)
        claim = await store.claim(entry, "w", 5000)
        assert claim is not None and claim.shard == shard
        claims.append(claim)
    for claim in claims:
        assert await store.jobs.append(claim.job_id, claim.owner, ["a", "b"], offset=0)
        await store.jobs.seen([claim.job_id])
        assert await store.renew(claim, 5000, abandon_ms=30_000) is Renewal.RENEWED
        await store.jobs.read(claim.job_id, 0, 10)
        await store.jobs.progress([claim.job_id])
        # Lost by its owner, claimed again (a reclaimed entry), lapsed, reaped, claimed, ended.
        outcome, _ = await store.requeue(
            claim.job_id, "handed over", max_attempts=5, owner=claim.owner, attempt=claim.attempt
        )
        assert outcome is Requeue.QUEUED
        [entry] = await store.queue.next_entries("dead", 1, 100, shard=claim.shard)
        await asyncio.sleep(0.02)
        [entry] = await store.queue.reclaim_entries("w", 10, 1, shard=claim.shard)
        again = await store.claim(entry, "w", 10)
        assert again is not None
        await asyncio.sleep(0.02)
        assert await Reaper(store, s).reap_leases() == [claim.job_id]
        [entry] = await store.queue.next_entries("w", 1, 100, shard=claim.shard)
        third = await store.claim(entry, "w", 5000)
        assert third is not None and third.attempt == 3
        assert await store.end(claim.job_id, JobStatus.DONE, owner=third.owner)
    # A cancel, a queued timeout, attempts spent, a stale lease.
    cancelled = await store.create(REQUEST, provider="simulated", model="sim-default")
    await store.cancel(cancelled)
    [entry] = await store.queue.next_entries("w", 1, 100, shard=keys.shard_of(cancelled))
    assert await store.claim(entry, "w", 5000) is None
    timed_out = await store.create(REQUEST, provider="simulated", model="sim-default")
    await asyncio.sleep(0.02)
    reaper = Reaper(store, s.model_copy(update={"queued_timeout_seconds": 0.01}))
    assert timed_out in await reaper.reap_queued()
    spent = await claim_next(store, "w")
    assert (await store.requeue(spent.job_id, "x", max_attempts=1))[0] is Requeue.SPENT
    ended = await claim_next(store, "w", lease_ms=10)
    await store.jobs.end(ended.job_id, JobStatus.DONE, owner=ended.owner)
    await asyncio.sleep(0.02)
    assert await reaper.reap_leases() == []
    assert await store.queue.lapsed_leases() == [] and await store.queue.queue_length() == 0
    await store.workers.forget_worker("w")

    # The whole service: keys, quotas, four delivery modes, a worker, a reaper, a cancel.
    async with serve(create_app(s), **server_options(s)) as base:
        headers = {"Authorization": "Bearer key-alice"}
        async with httpx.AsyncClient(base_url=base, timeout=30, headers=headers) as c:
            placed: dict[int, str] = {}  # a job on each shard (ids are random)
            while len(placed) < keys.queue_shards:
                r = await c.post("/jobs", json=REVIEW)
                assert r.status_code == 202, r.text
                placed.setdefault(keys.shard_of(r.json()["id"]), r.json()["id"])
            r = await c.post("/jobs", json=REVIEW)
            r = await c.delete(f"/jobs/{r.json()['id']}")
            assert r.status_code in (204, 409), r.text  # 409: it had ended already
            # A stream the key writes at /v1/stream/ (its quotas are the tenant's scripts).
            text = {"Content-Type": "text/plain"}
            r = await c.put("/v1/stream/slots", content=b"one", headers=text)
            assert r.status_code == 201, r.text
            modes = ("short_poll", "long_poll", "sse")  # the WebSocket would need a token
            results = await asyncio.gather(
                *(fl.follow(mode, c, base, j) for mode in modes for j in placed.values())
            )
            assert all(len(res.ends) == 1 for res in results)
    shas = script_shas(store.jobs, store.queue, store.workers, admission)
    assert slot_check.scripts.keys() >= shas, "a script was not run"
    assert slot_check.commands["MULTI"] == 0  # transactions are checked as their stacks
    assert slot_check.violations == []


# -- sharded pub/sub (Redis >= 7) -------------------------------------------------------------


async def test_a_store_on_sharded_pubsub_announces_with_spublish(
    redis: aioredis.Redis,
) -> None:
    """SPUBLISH needs Redis >= 7: the suite's own server is (tests/test_embedded.py checks)."""
    keys = Keys(queue_shards=3)
    store = Store(redis, keys, retention_seconds=60, sharded_pubsub=True)
    claim = await claim_next(store)
    channel = store.keys.channel(claim.job_id)
    sharded, plain = redis.pubsub(), redis.pubsub()
    await sharded.ssubscribe(channel)
    await plain.subscribe(channel)
    for pubsub in (sharded, plain):
        await pubsub.get_message(timeout=1)  # the subscription's confirmation
    assert await store.jobs.append(claim.job_id, claim.owner, ["Hi"], offset=0)
    await store.requeue(claim.job_id, "handed over", max_attempts=3, owner=claim.owner)
    [entry] = await store.queue.next_entries("w2", 1, 100, shard=claim.shard)
    second = await store.claim(entry, "w2", 5000)
    assert second is not None
    assert await store.end(claim.job_id, JobStatus.DONE, owner=second.owner)
    got = []
    while (msg := await sharded.get_message(timeout=0.5)) is not None:
        assert msg["type"] == "smessage"
        got.append(json.loads(msg["data"]))
    assert [next(iter(m)) for m in got] == ["offset", "status", "status", "end"]
    assert got[-1]["end"]["status"] == "done"
    assert await plain.get_message(timeout=0.2) is None  # PUBLISH was not used
    await sharded.aclose()
    await plain.aclose()


async def test_the_queue_length_counts_the_shards_that_answer(store: Store) -> None:
    """A shard that fails (on a cluster: its master is down) is left out of the capacity check
    instead of refusing every job; every shard failing is an error."""
    keys = store.keys
    for job_id in ids_on_every_shard(keys):
        await store.create(REQUEST, provider="simulated", model="sim-default", job_id=job_id)
    assert await store.queue.queue_length() == keys.queue_shards
    broken = keys.queue(keys.queue_shards - 1)
    await store.redis.delete(broken)
    await store.redis.set(broken, "not a stream")  # XLEN on it fails: WRONGTYPE
    if keys.queue_shards == 1:
        with pytest.raises(StoreError):
            await store.queue.queue_length()
    else:
        assert await store.queue.queue_length() == keys.queue_shards - 1
