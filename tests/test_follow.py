"""Follower: the branches where the feed's buffer is not enough and the list must be read.

Against real Redis with a real JobStore and Hub. Tokens are either appended by the store (which
announces them) or pushed onto the list behind the hub's back, which is what a notification lost
to a reconnect leaves: tokens on the list that no follower was told about. The hub's own resync
is set far off, so that only the branch under test can bring those tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from reviewstream.follow import Follower, FollowOptions, open_follower
from reviewstream.hub import Feed, Hub
from reviewstream.keys import Keys
from reviewstream.models import Batch, JobEnd, JobStatus, ReviewRequest
from reviewstream.store import JobStore

REQUEST = ReviewRequest(employee_name="Dorothy Vaughan", employee_review_points="Taught FORTRAN.")
OWNER = "w"


@pytest.fixture
async def store(redis: aioredis.Redis) -> JobStore:
    store = JobStore(redis, Keys(), retention_seconds=60)
    await store.ensure_group()
    return store


@pytest.fixture
async def job_id(store: JobStore) -> str:
    """A running job that ``OWNER`` may write to, with no tokens yet."""
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    [entry] = await store.next_entries(OWNER, 1, 100)
    assert await store.claim(entry, OWNER, 60_000)
    return job_id


@contextlib.asynccontextmanager
async def following(
    store: JobStore,
    job_id: str,
    *,
    buffer_tokens: int = 1024,
    page_size: int = 256,
    offset: int = 0,
) -> AsyncIterator[tuple[Follower, Feed]]:
    """A follower of ``job_id`` from ``offset`` on a hub of its own, and the feed it reads."""
    hub = Hub(store.redis, store.keys, buffer_tokens=buffer_tokens, resync_seconds=3600)
    await hub.start()
    try:
        async with (
            open_follower(hub, store, job_id, offset, FollowOptions(page_size)) as follower,
            hub.join(job_id) as feed,
        ):
            yield follower, feed
    finally:
        await hub.aclose()


async def unannounced(store: JobStore, job_id: str, *tokens: str) -> None:
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
    store: JobStore, job_id: str, new_epoch: Callable[[Feed], None]
) -> None:
    async with following(store, job_id) as (follower, feed):
        assert await store.append(job_id, OWNER, ["one"])
        assert await next_batch(follower) == (0, ["one"])
        await unannounced(store, job_id, " two")
        waiting = asyncio.create_task(next_batch(follower))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # caught up with the feed, which knows nothing of " two"
        new_epoch(feed)
        assert await waiting == (1, [" two"])
        assert await store.append(job_id, OWNER, [" three"])  # and back on the feed, once each
        assert await next_batch(follower) == (2, [" three"])


async def test_a_follower_behind_the_buffer_reads_the_list_in_pages(
    store: JobStore, job_id: str
) -> None:
    async with following(store, job_id, buffer_tokens=4, page_size=3) as (follower, feed):
        tokens = [f" t{i}" for i in range(20)]
        for token in tokens:  # one notification each; the feed keeps only the last four
            assert await store.append(job_id, OWNER, [token])
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
        assert await store.append(job_id, OWNER, [" last"])
        assert await next_batch(follower) == (20, [" last"])
        assert await store.finish(job_id, JobStatus.DONE, owner=OWNER)
        assert (await next_end(follower)).next_offset == 21


async def test_an_end_past_what_the_follower_got_reads_the_rest_first(
    store: JobStore, job_id: str
) -> None:
    async with following(store, job_id) as (follower, feed):
        assert await store.append(job_id, OWNER, ["one"])
        assert await next_batch(follower) == (0, ["one"])
        await unannounced(store, job_id, " two", " three")
        assert await store.finish(job_id, JobStatus.DONE, owner=OWNER)
        await asyncio.wait_for(feed.ended.wait(), 2)
        assert feed.end is not None and feed.end.next_offset == 3
        assert await next_batch(follower) == (1, [" two", " three"])
        end = await next_end(follower)
        assert end.status is JobStatus.DONE and end.next_offset == 3
        assert follower.finished


@pytest.mark.parametrize("offset", [0, 1])
async def test_a_job_ended_before_the_follower_came_ends_right_after_its_last_tokens(
    store: JobStore, job_id: str, offset: int
) -> None:
    # Its end was announced to nobody here: the list read that brings the last tokens must
    # bring the end too (the hub's resync, far off here, is not what ends a replay).
    assert await store.append(job_id, OWNER, ["one", " two", " three"])
    assert await store.finish(job_id, JobStatus.DONE, owner=OWNER)
    async with following(store, job_id, offset=offset) as (follower, _):
        assert await next_batch(follower) == (offset, ["one", " two", " three"][offset:])
        end = await next_end(follower)
        assert end.status is JobStatus.DONE and end.next_offset == 3
        assert follower.finished
