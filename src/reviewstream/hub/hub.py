"""Hub: one Redis pub/sub subscription per process, fanned out to every follower in it.

Each job that has followers here gets one ``Feed`` (``feed.py``) and one subscription to the
job's channel: on a single Redis a SUBSCRIBE on the process's one pub/sub connection, on a Redis
Cluster an SSUBSCRIBE on the node serving the channel's slot (``subscribers/``). Every subscribe
confirmation (the first, or one after redis-py or the subscriber reconnected, or after the
channel moved to another cluster node) starts a new epoch of its feed; a lost subscription
empties the feed's buffer at once.

Quiet feeds are checked, not re-read per follower. A waiting follower leaves its offset on the
feed (the feed keeps only the lowest since its last wake-up): not the highest offset the feed
has seen, because one follower's list read can run past what another was told. Once a second
the hub takes every feed with waiters that had no news for ``resync_seconds`` and reads each
job's status and token count, all of them in one pipeline (``JobReader.progress``), on a task of
its own so that routing notifications never waits for it. Only when that read shows what a
waiter was never told (more tokens than its offset, or an end) does the hub read the missing
range once and hand it to the feed like a notification; a job gone from Redis, or a gap wider
than the buffer, starts a new epoch instead. N idle followers of a job thus cost its check, not
N list reads, and nobody is woken when nothing changed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from ..errors import JobNotFound, StoreError
from ..keys import Keys
from ..models import Batch, JobEnd, JobStatus
from ..store import Snapshot
from ..store.notices import parse_notice
from .feed import Feed
from .subscribers import PlainSubscriber, ShardedSubscriber, Subscriber

log = logging.getLogger(__name__)

# Quiet jobs checked per pipeline: one round trip each, short enough not to hold Redis up.
CHECK_BATCH = 500
SWEEP_SECONDS = 1.0  # between sweeps: quiet feeds checked, unheld feeds unsubscribed


class JobReader(Protocol):
    """What the hub reads of the jobs it checks (``store.JobStore`` is one); it writes nothing."""

    async def progress(self, job_ids: Sequence[str]) -> list[tuple[JobStatus | None, int]]:
        """Each job's status (None: unknown or expired) and token count; with an ended status
        the count is final."""
        ...

    async def read(self, job_id: str, offset: int, limit: int) -> Snapshot:
        """Tokens from ``offset`` (at most ``limit``) and the job's state, read atomically;
        ``JobNotFound`` for an unknown or expired job."""
        ...


class Hub:
    """Routes the notifications of one subscriber (``subscribers/``) to in-process followers.

    ``join(job_id)`` subscribes (once per job per process) and returns only after Redis
    confirmed the subscription, so a follower that reads the list afterwards misses nothing.
    A feed nobody holds lingers ``linger_seconds`` before it is unsubscribed, so that a long
    poller's next request, or a client reconnecting, finds it still warm. Feeds whose followers
    wait with no news for ``resync_seconds`` are checked against the jobs through ``reader``
    (module docstring).
    """

    def __init__(
        self,
        redis: aioredis.Redis | RedisCluster,
        keys: Keys,
        reader: JobReader,
        *,
        buffer_tokens: int = 1024,
        subscribe_timeout: float = 10.0,
        linger_seconds: float = 5.0,
        resync_seconds: float = 5.0,
        coalesce_seconds: float = 0.0,
        ends_only: bool = False,
    ) -> None:
        self._keys = keys
        # A worker's hub hears its jobs' ends only (``keys.ends``), never the tokens it appends.
        self._channel = keys.ends if ends_only else keys.channel
        self._reader = reader
        self._buffer_tokens = buffer_tokens
        self._subscribe_timeout = subscribe_timeout
        self._linger_seconds = linger_seconds
        self._resync_seconds = resync_seconds
        self._coalesce_seconds = coalesce_seconds
        self._feeds: dict[str, Feed] = {}
        # Feeds awaiting a subscribe confirmation, per channel, in the order SUBSCRIBE was sent.
        self._expected: dict[str, collections.deque[Feed]] = collections.defaultdict(
            collections.deque
        )
        self._subscriber: Subscriber = (
            ShardedSubscriber(redis, self)
            if isinstance(redis, RedisCluster)
            else PlainSubscriber(redis, keys.channel("hub"), self)
        )
        self._task: asyncio.Task[None] | None = None
        self._sweeping: asyncio.Task[None] | None = None
        self._checking: asyncio.Task[None] | None = None
        self.draining = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._subscriber.run(), name="reviewstream-hub")
        self._sweeping = asyncio.create_task(self._sweeps(), name="reviewstream-hub-sweep")

    async def aclose(self) -> None:
        for task in (self._task, self._sweeping, self._checking):
            if task is not None:
                task.cancel()
                await asyncio.wait([task], timeout=2.0)
        self._task = self._sweeping = self._checking = None
        await self._subscriber.aclose()

    def drain(self) -> None:
        """The server is shutting down: every follower, now and later, stops at once."""
        self.draining = True
        for feed in self._feeds.values():
            feed.drain()

    @property
    def feeds(self) -> int:
        return len(self._feeds)

    @contextlib.asynccontextmanager
    async def join(self, job_id: str) -> AsyncIterator[Feed]:
        """The job's feed, subscribed and confirmed, for as long as the context lasts."""
        channel = self._channel(job_id)
        feed = self._feeds.get(channel)
        created = feed is None
        if feed is None:
            feed = Feed(channel, self._buffer_tokens, self._coalesce_seconds)
            self._feeds[channel] = feed
            feed.draining = self.draining
        # Held before any await: the sweep drops feeds nobody holds, and a feed dropped while
        # its SUBSCRIBE waited would never be confirmed (its joiners would time out).
        feed.refs += 1
        try:
            if created:
                await self._subscribe(feed)
            if not feed.confirmed.is_set():  # a warm feed costs its joiners no timer
                try:
                    async with asyncio.timeout(self._subscribe_timeout):
                        await feed.confirmed.wait()
                except TimeoutError as e:
                    raise StoreError("Redis did not confirm the subscription in time") from e
            yield feed
        finally:
            feed.refs -= 1
            feed.idle_since = time.monotonic()

    async def _subscribe(self, feed: Feed) -> None:
        self._expected[feed.channel].append(feed)
        await self._subscriber.subscribe(feed.channel)

    async def _sweeps(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            await self._sweep(time.monotonic())

    async def _sweep(self, now: float) -> None:
        """Check quiet feeds, unsubscribe feeds nobody held for ``linger_seconds``."""
        if self._checking is None or self._checking.done():
            due = [feed for feed in self._feeds.values() if feed.due(now, self._resync_seconds)]
            if due:
                for feed in due:
                    feed.news_at = now  # checked: not due again for another resync_seconds
                self._checking = asyncio.create_task(
                    self._check(due), name="reviewstream-hub-check"
                )
        idle = [
            channel
            for channel, feed in self._feeds.items()
            if feed.refs == 0 and now - feed.idle_since >= self._linger_seconds
        ]
        for channel in idle:
            del self._feeds[channel]
            await self._subscriber.unsubscribe(channel)

    async def _check(self, feeds: list[Feed]) -> None:
        """Compare quiet feeds with the jobs' status and count; repair only what was missed.

        Runs beside the hub's task, so notifications keep being routed meanwhile: a feed that
        changed while its job was read is skipped (its followers woke and look for themselves).
        """
        try:
            for start in range(0, len(feeds), CHECK_BATCH):
                await self._check_batch(feeds[start : start + CHECK_BATCH])
        except StoreError as e:
            log.warning("checking quiet jobs failed: %s", e)
        except Exception:  # the next sweep starts a new check; say why this one stopped
            log.exception("checking quiet jobs failed")

    async def _check_batch(self, feeds: list[Feed]) -> None:
        seen = [(feed, feed.version, feed.epoch, feed.waiting_from) for feed in feeds]
        progress = await self._reader.progress([self._job_id(feed) for feed in feeds])
        for (feed, version, epoch, waiting_from), (status, count) in zip(
            seen, progress, strict=True
        ):
            if waiting_from is None or feed.version != version or feed.epoch != epoch:
                continue
            if status is None:
                feed.resync()  # gone from Redis: followers read the list and learn so
            elif count > waiting_from or status.terminal:
                await self._catch_up(feed, version, epoch, min(waiting_from, count), count)

    async def _catch_up(
        self, feed: Feed, version: int, epoch: int, offset: int, count: int
    ) -> None:
        """Read what the feed's waiters missed, once, and hand it to the feed."""
        if count - offset > self._buffer_tokens:
            feed.resync()  # too much for the buffer: followers read the list in pages
            return
        try:
            snap = await self._reader.read(self._job_id(feed), offset, count - offset)
        except JobNotFound:
            feed.resync()
            return
        if feed.version != version or feed.epoch != epoch:
            return  # news came meanwhile; the next check looks again if needed
        log.info("%s: missed news read from the list (up to offset %d)", feed.channel, count)
        if snap.tokens:
            feed.push(Batch(snap.offset, snap.tokens, snap.ts))
        if snap.done:
            feed.job_ended(snap.end())

    def _job_id(self, feed: Feed) -> str:
        return self._keys.job_id_of_channel(feed.channel)

    # -- what the subscriber tells (subscribers.Listener) ---------------------------------------

    def subscribed(self, channel: str) -> None:
        """A subscription to ``channel`` is confirmed: its feed starts a new epoch.

        Confirmations are matched to feeds in the order their subscriptions were sent, so a
        stale one (for a feed dropped meanwhile) never vouches for a newer feed; one nobody
        waits for (the subscriber resubscribed by itself) is a new epoch of the current feed.
        """
        feed = self._feeds.get(channel)
        expected = self._expected.get(channel)
        first = expected.popleft() if expected else None
        if feed is not None and (first is None or first is feed):
            feed.resubscribed()

    def received(self, channel: str, data: Any) -> None:
        feed = self._feeds.get(channel)
        if feed is None or not feed.confirmed.is_set():
            return
        notice = parse_notice(data)
        if isinstance(notice, Batch):
            feed.push(notice)
        elif isinstance(notice, JobEnd):
            feed.job_ended(notice)
        else:
            feed.announce(notice)

    def lost(self, channels: Collection[str]) -> None:
        """Notifications on ``channels`` may be missed until they are confirmed again."""
        for channel in channels:
            self._expected.pop(channel, None)
            feed = self._feeds.get(channel)
            if feed is not None:
                feed.disconnected()
