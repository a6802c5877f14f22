"""ReviewService's long poll: one encoded answer per batch for every poller it wakes, pages from
Redis for a poller behind the buffer, and the answers that are not tokens (timeout, notice, end).

Against a real runtime (Redis, store, hub; no worker): the test writes the job's tokens itself
through the store, as a worker would, so it decides what every poller is woken by. A poller's
answer is the JSON bytes the route sends; that N pollers share one encoding shows as N
references to one bytes object.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from reviewstream.hub import Feed
from reviewstream.models import JobStatus, ReviewRequest
from reviewstream.runtime import open_runtime
from reviewstream.service import ReviewService
from reviewstream.settings import Settings
from reviewstream.store import Store
from reviewstream.tenancy import OPEN
from reviewstream.wire import long_poll_body

REQUEST = ReviewRequest(employee_name="Mary Jackson", employee_review_points="Wind tunnels.")
OWNER = "w#1"  # the owner token of worker "w"'s first attempt


@contextlib.asynccontextmanager
async def serving(settings: Settings, **changes: Any) -> AsyncIterator[ReviewService]:
    async with open_runtime(settings.model_copy(update=changes), worker=False) as runtime:
        yield ReviewService.on(runtime)


async def running_job(store: Store) -> str:
    """A job that ``OWNER`` may write to, with no tokens yet."""
    job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
    [entry] = await store.queue.next_entries("w", 1, 100)
    assert await store.claim(entry, "w", 60_000)
    return job_id


def poll(service: ReviewService, job_id: str, offset: int, hold: float = 10.0) -> Any:
    """A long poll's answer, encoded as the route encodes it (``wire.long_poll_body``)."""

    async def answer() -> bytes:
        return long_poll_body(await service.long_poll(job_id, offset, None, hold, OPEN))

    return asyncio.create_task(answer())


async def held(service: ReviewService, polls: int) -> None:
    """Until ``polls`` long polls are open. On a warm feed a poll joins, finds nothing new and
    waits within its first step, so once it is counted it is waiting."""
    async with asyncio.timeout(5):
        while service.followers < polls:
            await asyncio.sleep(0)


async def warm(service: ReviewService, job_id: str, tokens: list[str]) -> Feed:
    """Store ``tokens`` and have the feed hear the last of them, so that it covers the end."""
    store = service.store
    *before, last = tokens
    if before:
        assert await store.jobs.append(job_id, OWNER, before, offset=0)
    waiting = poll(service, job_id, len(before))
    await held(service, 1)
    async with service.hub.join(job_id) as feed:
        async with asyncio.timeout(5):
            while feed.waiting_from is None:  # the first poll read the list, then waits
                await asyncio.sleep(0.01)
        assert await store.jobs.append(job_id, OWNER, [last], offset=len(before))
        assert json.loads(await waiting)["tokens"] == [last]
        assert feed.covers(len(tokens))
        return feed


def page(body: bytes) -> dict[str, Any]:
    got: dict[str, Any] = json.loads(body)
    return got


async def commandstats(service: ReviewService) -> collections.Counter[str]:
    info = await service.store.redis.info("commandstats")
    return collections.Counter({k.removeprefix("cmdstat_"): v["calls"] for k, v in info.items()})


async def test_pollers_woken_at_one_offset_share_one_encoded_answer(settings: Settings) -> None:
    async with serving(settings) as service:
        job_id = await running_job(service.store)
        await warm(service, job_id, ["It", " was"])
        polls = [poll(service, job_id, 2) for _ in range(20)]
        await held(service, 20)
        assert await service.store.jobs.append(job_id, OWNER, [" a", " good"], offset=2)
        bodies = await asyncio.gather(*polls)
        assert all(body is bodies[0] for body in bodies)  # one encoding, twenty answers
        answer = page(bodies[0])
        assert {k: v for k, v in answer.items() if k != "ts"} == {
            "id": job_id,
            "status": "running",
            "offset": 2,
            "next_offset": 4,
            "tokens": [" a", " good"],
            "done": False,
            "error": None,
            "usage": None,
            "attempts": 1,
            "sha256": None,
        }
        assert len(answer["ts"]) == 2


async def test_pollers_behind_by_several_batches_share_one_merged_answer(
    settings: Settings,
) -> None:
    async with serving(settings) as service:
        job_id = await running_job(service.store)
        feed = await warm(service, job_id, ["One"])
        for offset, token in enumerate([" two", " three", " four"], start=1):
            assert await service.store.jobs.append(job_id, OWNER, [token], offset=offset)
        async with asyncio.timeout(5):
            while feed.next_offset != 4:
                await asyncio.sleep(0.01)
        bodies = await asyncio.gather(*(poll(service, job_id, 1) for _ in range(10)))
        assert all(body is bodies[0] for body in bodies)  # answered at once, one encoding
        assert page(bodies[0])["tokens"] == [" two", " three", " four"]
        assert page(bodies[0])["next_offset"] == 4
        # A poller further behind gets another range of the same buffer, encoded once too.
        further = await asyncio.gather(*(poll(service, job_id, 0) for _ in range(3)))
        assert further[0] is further[1] is further[2] is not bodies[0]
        assert page(further[0])["tokens"] == ["One", " two", " three", " four"]


async def test_a_poller_behind_the_buffer_pages_from_redis(settings: Settings) -> None:
    async with serving(settings, hub_buffer_tokens=2, page_size=3) as service:
        job_id = await running_job(service.store)
        tokens = [f" t{i}" for i in range(8)]
        feed = await warm(service, job_id, tokens[:2])
        for offset in range(2, len(tokens)):  # one notification each; the feed keeps two
            assert await service.store.jobs.append(job_id, OWNER, [tokens[offset]], offset=offset)
        async with asyncio.timeout(5):
            while feed.next_offset != len(tokens):
                await asyncio.sleep(0.01)
        assert not feed.covers(1)
        before = await commandstats(service)
        answer = page(await poll(service, job_id, 1))
        read = await commandstats(service) - before
        assert answer["tokens"] == tokens[1:4] and answer["next_offset"] == 4  # one page
        assert read["lrange"] == 2  # the tokens and their times, from the list
        assert page(await poll(service, job_id, 6))["tokens"] == tokens[6:]  # from the buffer
        assert (await commandstats(service) - before)["lrange"] == 2


async def test_a_held_poll_times_out_with_what_is_stored(settings: Settings) -> None:
    async with serving(settings, long_poll_max_timeout=0.3) as service:
        job_id = await running_job(service.store)
        await warm(service, job_id, ["Quiet"])
        started = time.monotonic()
        answer = page(await poll(service, job_id, 1, hold=0.2))
        assert 0.18 < time.monotonic() - started < 2  # never later than asked, but about it
        assert answer["tokens"] == [] and answer["next_offset"] == 1
        assert (answer["status"], answer["done"], answer["attempts"]) == ("running", False, 1)
        started = time.monotonic()
        await poll(service, job_id, 1, hold=60)
        assert time.monotonic() - started < 2  # the server's cap


async def test_a_held_poll_answers_a_lost_producer_at_once(settings: Settings) -> None:
    async with serving(settings) as service:
        job_id = await running_job(service.store)
        await warm(service, job_id, ["Lost", " here"])
        waiting = poll(service, job_id, 2)
        await held(service, 1)
        await service.store.requeue(job_id, "worker gone", max_attempts=3, owner=OWNER)
        answer = page(await asyncio.wait_for(waiting, 5))
        assert answer["status"] == "queued" and answer["tokens"] == []
        assert (answer["offset"], answer["next_offset"], answer["done"]) == (2, 2, False)
        assert answer["attempts"] == 1


async def test_a_held_poll_answers_the_end_with_the_text_hash(settings: Settings) -> None:
    async with serving(settings) as service:
        job_id = await running_job(service.store)
        tokens = ["All", " done"]
        await warm(service, job_id, tokens)
        waiting = [poll(service, job_id, 2) for _ in range(3)]
        await held(service, 3)
        assert await service.store.end(job_id, JobStatus.DONE, owner=OWNER)
        answers = [page(body) for body in await asyncio.gather(*waiting)]
        digest = hashlib.sha256("".join(tokens).encode()).hexdigest()
        for answer in answers:
            assert (answer["status"], answer["done"], answer["sha256"]) == ("done", True, digest)
            assert (answer["offset"], answer["next_offset"], answer["tokens"]) == (2, 2, [])
        # After the end, a poller behind gets the last tokens and the end in one answer.
        late = page(await poll(service, job_id, 1))
        assert late["tokens"] == [" done"] and late["done"] and late["sha256"] == digest
