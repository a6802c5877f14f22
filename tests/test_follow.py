"""Follower: the branches where the feed's buffer is not enough and the list must be read, and
the hub's check of quiet feeds, which brings what a lost notification never told.

Against real Redis with a real JobStore and Hub. Tokens are either appended by the store (which
announces them) or pushed onto the list behind the hub's back, which is what a notification lost
to a reconnect leaves: tokens on the list that no follower was told about. The hub's own check
is set far off, except in the tests of that check, so that only the branch under test can bring
those tokens. The check's cost is counted with ``INFO commandstats``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from reviewstream.errors import JobNotFound
from reviewstream.follow import Follower, FollowOptions
from reviewstream.hub import Feed, Hub
from reviewstream.keys import Keys
from reviewstream.models import Batch, JobEnd, JobStatus, ReviewRequest
from reviewstream.store import JobStore, Store

REQUEST = ReviewRequest(employee_name="Dorothy Vaughan", employee_review_points="Taught FORTRAN.")
WORKER = "w"
OWNER = "w#1"  # the owner token of WORKER's first attempt


@pytest.fixture
async def store(redis: aioredis.Redis) -> Store:
    store = Store(redis, Keys(), retention_seconds=60)
    await store.queue.ensure_group()
    return store


@pytest.fixture
async def job_id(store: Store) -> str:
    """A running job that ``OWNER`` may write to, with no tokens yet."""
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    [entry] = await store.queue.next_entries(WORKER, 1, 100)
    assert await store.claim(entry, WORKER, 60_000)
    return job_id


@contextlib.asynccontextmanager
async def following(
    store: Store,
    job_id: str,
    *,
    buffer_tokens: int = 1024,
    page_size: int = 256,
    resync_seconds: float = 3600,
    offset: int = 0,
) -> AsyncIterator[tuple[Follower, Feed]]:
    """A follower of ``job_id`` from ``offset`` on a hub of its own, and the feed it reads."""
    async with crowd(store, job_id, 1, buffer_tokens, page_size, resync_seconds, offset) as (
        [follower],
        feed,
    ):
        yield follower, feed


@contextlib.asynccontextmanager
async def crowd(
    store: Store,
    job_id: str,
    n: int,
    buffer_tokens: int = 1024,
    page_size: int = 256,
    resync_seconds: float = 3600,
    offset: int = 0,
) -> AsyncIterator[tuple[list[Follower], Feed]]:
    """``n`` followers of ``job_id`` from ``offset`` on a hub of their own, and their feed."""
    hub = Hub(
        store.redis,
        store.keys,
        store.jobs,
        buffer_tokens=buffer_tokens,
        resync_seconds=resync_seconds,
    )
    await hub.start()
    try:
        async with contextlib.AsyncExitStack() as stack:
            options = FollowOptions(page_size)
            followers = [
                await follow(stack, hub, store.jobs, job_id, offset, options) for _ in range(n)
            ]
            feed = await stack.enter_async_context(hub.join(job_id))
            yield followers, feed
    finally:
        await hub.aclose()


async def follow(
    stack: contextlib.AsyncExitStack,
    hub: Hub,
    store: JobStore,
    job_id: str,
    offset: int,
    options: FollowOptions,
) -> Follower:
    """A follower held in ``stack``, opened as ``ReviewService.follow`` opens one: the job's
    feed joined (subscribed and confirmed), then the follower's first list read."""
    feed = await stack.enter_async_context(hub.join(job_id))
    follower = Follower(store, feed, job_id, offset, options)
    await follower.start()
    return follower


async def unannounced(store: Store, job_id: str, *tokens: str) -> None:
    """Put tokens on the job's list with no notification, as a lost message leaves them."""
    await store.redis.rpush(store.keys.chunks(job_id), *tokens)
    await store.redis.rpush(store.keys.times(job_id), *(["1.0"] * len(tokens)))


async def next_batch(follower: Follower) -> tuple[int, list[str]]:
    item = await asyncio.wait_for(follower.next(), 2)
    assert isinstance(item, Batch), item
    return item.offset, item.tokens


async def next_end(follower: Follower) -> JobEnd:
    item = await asyncio.wait_for(follower.next(), 2)
    assert isinstance(item, JobEnd), item
    return item


@pytest.mark.parametrize("new_epoch", [Feed.resync, Feed.resubscribed], ids=lambda f: f.__name__)
async def test_a_new_epoch_makes_a_caught_up_follower_read_what_it_was_never_told(
    store: Store, job_id: str, new_epoch: Callable[[Feed], None]
) -> None:
    async with following(store, job_id) as (follower, feed):
        assert await store.jobs.append(job_id, OWNER, ["one"])
        assert await next_batch(follower) == (0, ["one"])
        await unannounced(store, job_id, " two")
        waiting = asyncio.create_task(next_batch(follower))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # caught up with the feed, which knows nothing of " two"
        new_epoch(feed)
        assert await waiting == (1, [" two"])
        assert await store.jobs.append(job_id, OWNER, [" three"])  # and back on the feed, once each
        assert await next_batch(follower) == (2, [" three"])


async def test_a_follower_behind_the_buffer_reads_the_list_in_pages(
    store: Store, job_id: str
) -> None:
    async with following(store, job_id, buffer_tokens=4, page_size=3) as (follower, feed):
        tokens = [f" t{i}" for i in range(20)]
        for token in tokens:  # one notification each; the feed keeps only the last four
            assert await store.jobs.append(job_id, OWNER, [token])
        async with asyncio.timeout(2):
            while not feed.covers(len(tokens)):
                await asyncio.sleep(0.01)
        assert not feed.covers(0)
        batches = []
        while follower.offset < len(tokens):
            batches.append(await next_batch(follower))
        assert [offset for offset, _ in batches] == list(range(0, 20, 3))
        assert [len(got) for _, got in batches] == [3] * 6 + [2]
        assert [t for _, got in batches for t in got] == tokens
        # Caught up again: the next token comes from the feed, then the end.
        assert await store.jobs.append(job_id, OWNER, [" last"])
        assert await next_batch(follower) == (20, [" last"])
        assert await store.end(job_id, JobStatus.DONE, owner=OWNER)
        assert (await next_end(follower)).next_offset == 21


async def test_an_end_past_what_the_follower_got_reads_the_rest_first(
    store: Store, job_id: str
) -> None:
    async with following(store, job_id) as (follower, feed):
        assert await store.jobs.append(job_id, OWNER, ["one"])
        assert await next_batch(follower) == (0, ["one"])
        await unannounced(store, job_id, " two", " three")
        assert await store.end(job_id, JobStatus.DONE, owner=OWNER)
        await asyncio.wait_for(feed.ended.wait(), 2)
        assert feed.end is not None and feed.end.next_offset == 3
        assert await next_batch(follower) == (1, [" two", " three"])
        end = await next_end(follower)
        assert end.status is JobStatus.DONE and end.next_offset == 3
        assert follower.reached_end


# -- the hub's check of quiet feeds -----------------------------------------------------------

QUICK = 0.1  # resync_seconds: every sweep of the hub (once a second) checks a quiet feed


async def commands(redis: aioredis.Redis) -> collections.Counter[str]:
    """Calls per Redis command so far (the counting itself left out)."""
    info = await redis.info("commandstats")
    return collections.Counter(
        {k.removeprefix("cmdstat_"): v["calls"] for k, v in info.items() if k != "cmdstat_info"}
    )


async def waiting(feed: Feed, offset: int, waits: list[asyncio.Task[object]]) -> None:
    """Until every follower waits on the feed (none has anything to deliver)."""
    async with asyncio.timeout(5):
        while feed.waiting_from != offset:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
    assert not any(w.done() for w in waits)


async def test_idle_followers_cost_one_check_per_feed_not_a_read_each(
    store: Store, job_id: str
) -> None:
    """20 or 200 idle followers: the same few commands (status and count), nobody woken."""
    costs = {}
    for n in (20, 200):
        async with crowd(store, job_id, n, resync_seconds=QUICK) as (followers, feed):
            waits: list[asyncio.Task[object]] = [asyncio.create_task(f.next()) for f in followers]
            await waiting(feed, 0, waits)
            version, before = feed.version, await commands(store.redis)
            await asyncio.sleep(3.2)  # three sweeps or four
            costs[n] = await commands(store.redis) - before
            assert feed.version == version and not any(w.done() for w in waits)
            for w in waits:
                w.cancel()
    for n, cost in costs.items():
        assert set(cost) == {"hget", "llen"}, (n, cost)
        assert 3 <= cost["hget"] == cost["llen"] <= 4, (n, cost)


async def test_a_lost_notification_reaches_idle_followers_with_one_read(
    store: Store, job_id: str
) -> None:
    async with crowd(store, job_id, 50, resync_seconds=QUICK) as (followers, feed):
        assert await store.jobs.append(job_id, OWNER, ["one"])
        for f in followers:
            assert await next_batch(f) == (0, ["one"])
        waits: list[asyncio.Task[object]] = [asyncio.create_task(f.next()) for f in followers]
        await waiting(feed, 1, waits)
        before = await commands(store.redis)
        await unannounced(store, job_id, " two", " three")
        started = time.monotonic()
        got = await asyncio.wait_for(asyncio.gather(*waits), 3)
        assert time.monotonic() - started < 2.5  # the next sweep or the one after
        assert all(isinstance(b, Batch) and (b.offset, b.tokens) == (1, [" two", " three"])
                   for b in got)  # fmt: skip
        cost = await commands(store.redis) - before
        assert cost["lrange"] == 2, cost  # one read of the missing range, for all 50
        # Back on the feed afterwards, once each.
        assert await store.jobs.append(job_id, OWNER, [" four"])
        for f in followers:
            assert await next_batch(f) == (3, [" four"])


async def test_an_end_whose_notice_was_lost_reaches_idle_followers(
    store: Store, job_id: str
) -> None:
    async with crowd(store, job_id, 20, resync_seconds=QUICK) as (followers, feed):
        assert await store.jobs.append(job_id, OWNER, ["one"])
        for f in followers:
            assert await next_batch(f) == (0, ["one"])
        waits: list[asyncio.Task[object]] = [asyncio.create_task(f.next()) for f in followers]
        await waiting(feed, 1, waits)
        before = await commands(store.redis)
        # Ended behind the hub's back: the status written, no notice published.
        meta = store.keys.meta(job_id)
        await store.redis.hset(meta, mapping={"status": "done", "count": 1})
        ends = await asyncio.wait_for(asyncio.gather(*waits), 3)
        assert all(isinstance(e, JobEnd) and (e.status, e.next_offset) == (JobStatus.DONE, 1)
                   for e in ends)  # fmt: skip
        assert (await commands(store.redis) - before)["multi"] == 1  # one read for all 20


async def test_a_gap_wider_than_the_buffer_makes_followers_read_the_list(
    store: Store, job_id: str
) -> None:
    async with following(store, job_id, buffer_tokens=4, page_size=3, resync_seconds=QUICK) as (
        follower,
        feed,
    ):
        assert await store.jobs.append(job_id, OWNER, ["t0"])
        assert await next_batch(follower) == (0, ["t0"])
        tokens = [f" t{i}" for i in range(1, 11)]
        await unannounced(store, job_id, *tokens)
        got: list[str] = []
        while follower.offset < 11:
            offset, batch = await asyncio.wait_for(next_batch(follower), 3)
            assert offset == len(got) + 1
            got += batch
        assert got == tokens


async def test_a_job_gone_from_redis_is_not_found_for_its_idle_followers(
    store: Store, job_id: str
) -> None:
    async with following(store, job_id, resync_seconds=QUICK) as (follower, feed):
        waits: list[asyncio.Task[object]] = [asyncio.create_task(follower.next())]
        await waiting(feed, 0, waits)
        await store.redis.delete(store.keys.meta(job_id), store.keys.chunks(job_id))
        with pytest.raises(JobNotFound):
            await asyncio.wait_for(waits[0], 3)


@pytest.mark.parametrize("offset", [0, 1])
async def test_a_job_ended_before_the_follower_came_ends_right_after_its_last_tokens(
    store: Store, job_id: str, offset: int
) -> None:
    # Its end was announced to nobody here: the list read that brings the last tokens must
    # bring the end too (the hub's resync, far off here, is not what ends a replay).
    assert await store.jobs.append(job_id, OWNER, ["one", " two", " three"])
    assert await store.end(job_id, JobStatus.DONE, owner=OWNER)
    async with following(store, job_id, offset=offset) as (follower, _):
        assert await next_batch(follower) == (offset, ["one", " two", " three"][offset:])
        end = await next_end(follower)
        assert end.status is JobStatus.DONE and end.next_offset == 3
        assert follower.reached_end
