"""Feed: the shared per-job buffer every caught-up follower reads from; Hub: its subscriptions."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis

from reviewstream.hub import Feed, Hub
from reviewstream.hub.subscribers import PlainSubscriber
from reviewstream.keys import Keys
from reviewstream.models import Batch, JobEnd, JobStatus
from reviewstream.store import JobStore
from reviewstream.wire import sse_token_event


def feed_with(*batches: Batch, max_tokens: int = 100) -> Feed:
    feed = Feed("ch", max_tokens)
    feed.resubscribed()
    for batch in batches:
        feed.push(batch)
    return feed


def test_caught_up_followers_share_one_batch_and_one_encoding() -> None:
    last = Batch(2, ["c"], [3.0])
    feed = feed_with(Batch(0, ["a", "b"], [1.0, 2.0]), last)
    assert feed.tokens_from(2, 10) is last
    first = sse_token_event(last)
    assert sse_token_event(feed.tokens_from(2, 10)) is first  # type: ignore[arg-type]
    assert b"id: 3" in first and b'"tokens":["c"]' in first


def test_slices_across_batches_respect_offset_and_limit() -> None:
    feed = feed_with(Batch(0, ["a", "b"], [1.0, 2.0]), Batch(2, ["c", "d"], [3.0, 4.0]))
    got = feed.tokens_from(1, 2)
    assert got is not None and (got.offset, got.tokens, got.ts) == (1, ["b", "c"], [2.0, 3.0])
    got = feed.tokens_from(4, 10)
    assert got is not None and got.tokens == []  # caught up: nothing yet


def test_follower_behind_the_buffer_is_told_to_read_the_list() -> None:
    feed = feed_with(*(Batch(i, [str(i)], [float(i)]) for i in range(10)), max_tokens=4)
    assert feed.tokens_from(5, 10) is None
    got = feed.tokens_from(6, 10)
    assert got is not None and got.tokens == ["6", "7", "8", "9"]


def test_a_gap_empties_the_buffer_and_epochs_invalidate_it() -> None:
    feed = feed_with(Batch(0, ["a"], [1.0]))
    feed.push(Batch(5, ["f"], [6.0]))  # offsets 1-4 were missed
    assert feed.tokens_from(0, 10) is None and feed.covers(5) and not feed.covers(0)
    epoch = feed.epoch
    feed.resubscribed()
    assert feed.epoch == epoch + 1 and not feed.covers(5)


async def test_coalescing_wakes_followers_once_per_window_with_one_timer() -> None:
    feed = Feed("ch", 100, coalesce_seconds=0.05)
    feed.resubscribed()
    version = feed.version
    started = time.monotonic()
    for i in range(5):  # five notifications inside one window
        feed.push(Batch(i, [str(i)], [float(i)]))
    assert feed.version == version  # nobody woken yet
    await asyncio.wait_for(feed.changed(version, 0), 1)
    assert 0.04 <= time.monotonic() - started < 0.5
    assert feed.version == version + 1  # one wake-up for the five
    got = feed.tokens_from(0, 10)
    assert got is not None and got.tokens == ["0", "1", "2", "3", "4"]
    # The end is not held back: it wakes at once, with the tokens still in the window.
    version = feed.version
    feed.push(Batch(5, ["5"], [5.0]))
    feed.job_ended(JobEnd(status=JobStatus.DONE, next_offset=6))
    assert feed.version == version + 1
    await asyncio.sleep(0.08)
    assert feed.version == version + 1  # the window's timer was cancelled, no second wake


def test_without_a_window_every_notification_wakes_followers() -> None:
    feed = feed_with()
    version = feed.version
    feed.push(Batch(0, ["a"], [1.0]))
    feed.push(Batch(1, ["b"], [2.0]))
    assert feed.version == version + 2


def test_a_notification_already_held_is_old_news_and_a_partial_one_adds_its_rest() -> None:
    """What a check fetched may be notified afterwards: held once, nobody woken twice."""
    feed = feed_with(Batch(0, ["a", "b", "c"], [1.0, 2.0, 3.0]))
    version = feed.version
    feed.push(Batch(1, ["b", "c"], [2.0, 3.0]))
    assert feed.version == version and feed.next_offset == 3
    got = feed.tokens_from(0, 10)
    assert got is not None and got.tokens == ["a", "b", "c"]
    feed.push(Batch(2, ["c", "d"], [3.0, 4.0]))  # overlaps the buffer's end: keep "d" only
    got = feed.tokens_from(0, 10)
    assert got is not None and (got.tokens, got.ts) == (["a", "b", "c", "d"], [1.0, 2.0, 3.0, 4.0])
    assert feed.version == version + 1


def test_an_end_heard_twice_wakes_followers_once() -> None:
    feed = feed_with(Batch(0, ["a"], [1.0]))
    version = feed.version
    feed.job_ended(JobEnd(status=JobStatus.DONE, next_offset=1))
    feed.job_ended(JobEnd(status=JobStatus.DONE, next_offset=1))
    assert feed.version == version + 1 and feed.end is not None


async def test_waiters_leave_their_lowest_offset_until_the_next_wake_up() -> None:
    """The hub's check of a quiet feed compares the job's count with this offset."""
    feed = feed_with()
    feed.refs = 3
    assert feed.waiting_from is None and not feed.due(time.monotonic() + 60, 5)
    version = feed.version
    waiters = [asyncio.create_task(feed.changed(version, offset)) for offset in (7, 4, 9)]
    await asyncio.sleep(0)
    assert feed.waiting_from == 4
    assert feed.due(time.monotonic() + 60, 5) and not feed.due(time.monotonic(), 5)
    feed.push(Batch(0, ["a"], [1.0]))  # a wake-up: every waiter goes
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert feed.waiting_from is None and not feed.due(time.monotonic() + 60, 5)
    # A feed that has the end, or is not subscribed, is never checked.
    waiter = asyncio.create_task(feed.changed(feed.version, 1))
    await asyncio.sleep(0)
    assert feed.due(time.monotonic() + 60, 5)
    feed.disconnected()
    await asyncio.wait_for(waiter, 1)
    waiter = asyncio.create_task(feed.changed(feed.version, 1))
    await asyncio.sleep(0)
    assert not feed.due(time.monotonic() + 60, 5)
    feed.resubscribed()
    await asyncio.wait_for(waiter, 1)
    feed.job_ended(JobEnd(status=JobStatus.DONE, next_offset=1))
    waiter = asyncio.create_task(feed.changed(feed.version, 1))
    await asyncio.sleep(0)
    assert feed.waiting_from == 1 and not feed.due(time.monotonic() + 60, 5)
    waiter.cancel()


async def test_a_new_feed_is_held_while_its_subscribe_waits(redis: aioredis.Redis) -> None:
    """A sweep while a new job's SUBSCRIBE waits its turn must not drop the feed: its joiner
    would never see the confirmation and fail after the subscribe timeout."""
    store = JobStore(redis, Keys("t"), retention_seconds=0)
    hub = Hub(redis, store.keys, store, subscribe_timeout=2, linger_seconds=0)
    await hub.start()
    joined: asyncio.Future[Feed] = asyncio.get_running_loop().create_future()
    leave = asyncio.Event()

    async def follow() -> None:
        async with hub.join("job") as feed:
            joined.set_result(feed)
            await leave.wait()

    subscriber = hub._subscriber
    assert isinstance(subscriber, PlainSubscriber)
    try:
        await asyncio.wait_for(subscriber.connected.wait(), 5)
        async with subscriber.lock:  # SUBSCRIBEs queue behind it, as in a burst of new jobs
            follower = asyncio.create_task(follow())
            await asyncio.sleep(0.05)
            sweep = asyncio.create_task(hub._sweep(time.monotonic() + 60))
            await asyncio.sleep(0.05)
        await sweep
        waits: list[asyncio.Future[Any]] = [joined, follower]
        await asyncio.wait(waits, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        if follower.done():
            follower.result()  # the join failed: raise its error
        feed = joined.result()
        assert feed.confirmed.is_set() and hub.feeds == 1
        leave.set()
        await follower
    finally:
        await hub.aclose()


def test_a_feed_buffers_large_chunks_by_size_not_count() -> None:
    """A Durable Stream's chunk is a whole append: the buffer weighs a chunk by its KiB, so a
    few megabyte appends do not fill a buffer sized in tokens."""
    big = "x" * (64 * 1024)
    feed = feed_with(*(Batch(i, [big], [0.0]) for i in range(4)), max_tokens=100)
    assert feed.tokens_from(3, 10) is not None and feed.tokens_from(2, 10) is None
    small = feed_with(*(Batch(i, ["word"], [0.0]) for i in range(4)), max_tokens=100)
    assert small.tokens_from(0, 10) is not None  # tokens still weigh one each
