"""Hub: one Redis pub/sub subscription per process, fanned out to every follower in it.

Each job that has followers here gets one ``Feed``: one subscription to the job's channel (on a
single Redis a SUBSCRIBE on the process's one pub/sub connection; on a Redis Cluster an
SSUBSCRIBE on the node serving the channel's slot: ``subscribers.py``), a small
bounded buffer of the most recent notifications (which carry the tokens and their offsets), the
job's end once announced, and one wake-up event that every waiting follower shares. A caught-up
follower takes its tokens from the buffer, so Redis does no work per follower per token; a
follower that falls behind the buffer reads the missing range from the list in pages
(``follow.Follower``). Nothing is queued per follower, so a slow client costs no memory here.

A feed's buffer is only trusted while its subscription is unbroken: every subscribe confirmation
(the first, or one after redis-py or the subscriber reconnected, or after the channel moved to
another cluster node) starts a new ``epoch``, empties the buffer and wakes the followers, who
then re-read the list from their own offsets; a lost subscription empties the buffer at once.

Quiet feeds are checked, not re-read per follower. A waiting follower leaves its offset on the
feed (the feed keeps only the lowest since its last wake-up): not the highest offset the feed
has seen, because one follower's list read can run past what another was told. Once a second
the hub takes every feed with waiters that had no news for ``resync_seconds`` and reads each
job's status and token count, all of them in one pipeline (``JobStore.progress``: two commands
a job), on a task of its own so that routing notifications never waits for it. Only when that
read shows what a waiter was never told (more tokens than its offset, or an end) does the hub
read the missing range once and hand it to the feed like a notification; a job gone from
Redis, or a gap wider than the buffer, starts a new epoch instead. N idle followers of a job
thus cost its check, not N list reads, and nobody is woken when nothing changed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Collection
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from ..errors import JobNotFound, StoreError
from ..keys import Keys
from ..models import Batch, JobEnd, JobNotice
from ..store import JobStore
from ..store.notices import parse_notice
from .subscribers import PlainSubscriber, ShardedSubscriber, Subscriber

log = logging.getLogger(__name__)

# Quiet jobs checked per pipeline: one round trip each, short enough not to hold Redis up.
CHECK_BATCH = 500


class Feed:
    """What one process knows of one job's live stream; shared by all its followers there."""

    def __init__(self, channel: str, max_tokens: int, coalesce_seconds: float = 0.0) -> None:
        self.channel = channel
        self.refs = 0
        self.idle_since = time.monotonic()
        self.epoch = 0
        self.confirmed = asyncio.Event()
        self.end: JobEnd | None = None
        self.ended = asyncio.Event()
        self.draining = False  # the server is shutting down: followers stop, clients resume
        self.tenant: str | None = None  # who created the job, once a list read told us
        self.attempts = 0  # attempts started, as far as this process has heard
        self.notice: JobNotice | None = None  # the latest change of producer heard here
        self.notices = 0  # how many were heard
        self.version = 0
        self.news_at = time.monotonic()  # the last wake-up, notification or check by the hub
        self._changed = asyncio.Event()
        # The lowest offset a follower waits at since the last wake-up (None: nobody waits).
        self._waiting_from: int | None = None
        self._batches: collections.deque[Batch] = collections.deque()
        self._buffered = 0
        # Ranges of the buffer handed out since it last changed, by (offset, limit): followers
        # at the same offset get the same batch object, and so share its encodings.
        self._ranges: dict[tuple[int, int], Batch] = {}
        self._max_tokens = max_tokens
        # Coalescing window: tokens wake the followers at most once per window, all of them
        # with one timer (this one), so each follower sends what gathered in one message.
        self._coalesce_seconds = coalesce_seconds
        self._flush: asyncio.TimerHandle | None = None

    # -- written by the hub -------------------------------------------------------------------

    def resubscribed(self) -> None:
        """A (new) subscription is live: older notifications may have been missed."""
        self.epoch += 1
        self._batches.clear()
        self._ranges.clear()
        self._buffered = 0
        self.confirmed.set()
        self._wake()

    def disconnected(self) -> None:
        self.confirmed.clear()
        self._batches.clear()
        self._ranges.clear()
        self._buffered = 0
        self._wake()

    def push(self, batch: Batch) -> None:
        self.news_at = time.monotonic()
        if self._batches:
            held = self._batches[-1].next_offset
            if batch.next_offset <= held:
                return  # old news: a check fetched it before its notification arrived
            if batch.offset < held:  # partly held: keep the rest
                skip = held - batch.offset
                batch = Batch(held, batch.tokens[skip:], batch.ts[skip:])
            elif batch.offset != held:
                # Not contiguous with what we hold: drop it all, followers read the list instead.
                self._batches.clear()
                self._buffered = 0
        self._batches.append(batch)
        self._ranges.clear()
        self._buffered += len(batch.tokens)
        while self._buffered > self._max_tokens and len(self._batches) > 1:
            self._buffered -= len(self._batches.popleft().tokens)
        if self._coalesce_seconds <= 0:
            self._wake()
        elif self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(self._coalesce_seconds, self._wake)

    def announce(self, notice: JobNotice) -> None:
        self.notice = notice
        self.notices += 1
        self.attempts = max(self.attempts, notice.attempt)
        self._wake()

    def finish(self, end: JobEnd) -> None:
        if self.end is not None:
            return  # heard twice (a check found it before its notice arrived): one wake-up
        self.end = end
        self.ended.set()
        self._wake()

    def drain(self) -> None:
        self.draining = True
        self._wake()

    def resync(self) -> None:
        """Have every follower re-read the list from its own offset (a new epoch)."""
        self.epoch += 1
        self._wake()

    @property
    def waiting_from(self) -> int | None:
        """The lowest offset a follower waits at, if any waits (reset by every wake-up)."""
        return self._waiting_from

    @property
    def next_offset(self) -> int | None:
        """Where the buffer ends (None when empty)."""
        return self._batches[-1].next_offset if self._batches else None

    def _wake(self) -> None:
        if self._flush is not None:  # anything else that wakes followers delivers tokens too
            self._flush.cancel()
            self._flush = None
        self.news_at = time.monotonic()
        self.version += 1
        self._waiting_from = None  # every waiter wakes; those that wait again say where
        self._changed.set()
        self._changed = asyncio.Event()

    # -- read by followers --------------------------------------------------------------------

    def covers(self, offset: int) -> bool:
        """True when this feed alone can serve a follower from ``offset`` (no list read).

        Never for an ended job: its keys expire after the retention, and a follower must then
        get a clear 404 rather than what this process still remembers.
        """
        return (
            self.end is None
            and bool(self._batches)
            and (self._batches[0].offset <= offset <= self._batches[-1].next_offset)
        )

    def tokens_from(self, offset: int, limit: int) -> Batch | None:
        """Buffered tokens from ``offset`` on; empty if none yet; None if ``offset`` fell out.

        Followers are mostly caught up, so the search starts from the newest batch; a follower
        that is exactly one batch behind gets that very batch object, and followers further
        behind at the same offset get one merged batch between them (shared encodings).
        """
        batches = self._batches
        if not batches or offset >= batches[-1].next_offset:
            return Batch(offset, [], [])
        if offset < batches[0].offset:
            return None
        i = len(batches) - 1
        while batches[i].offset > offset:
            i -= 1
        newest = batches[i]
        if i == len(batches) - 1 and newest.offset == offset and len(newest.tokens) <= limit:
            return newest
        merged = self._ranges.get((offset, limit))
        if merged is not None:
            return merged
        tokens: list[str] = []
        ts: list[float] = []
        for batch in itertools.islice(batches, i, None):
            skip = offset + len(tokens) - batch.offset
            take = batch.tokens[skip : skip + limit - len(tokens)]
            tokens += take
            ts += batch.ts[skip : skip + len(take)]
            if len(tokens) >= limit:
                break
        merged = self._ranges[offset, limit] = Batch(offset, tokens, ts)
        return merged

    async def changed(self, version: int, offset: int) -> None:
        """Wait, at ``offset``, until the feed changes after ``version``.

        No timer per waiter: the hub checks quiet feeds itself against the lowest offset waited
        at, so a delivery costs a follower no timer of its own and an idle one costs nothing.
        """
        if self.version == version:
            if self._waiting_from is None or offset < self._waiting_from:
                self._waiting_from = offset
            await self._changed.wait()

    def due(self, now: float, quiet_seconds: float) -> bool:
        """Worth a check by the hub: followers wait, and no news came for ``quiet_seconds``."""
        return (
            self.refs > 0
            and self.end is None
            and self._waiting_from is not None
            and self.confirmed.is_set()
            and now - self.news_at >= quiet_seconds
        )


class Hub:
    """Routes the notifications of one subscriber (``subscribers.py``) to in-process followers.

    ``join(job_id)`` subscribes (once per job per process) and returns only after Redis
    confirmed the subscription, so a follower that reads the list afterwards misses nothing.
    A feed nobody holds lingers ``linger_seconds`` before it is unsubscribed, so that a long
    poller's next request, or a client reconnecting, finds it still warm. Feeds whose followers
    wait with no news for ``resync_seconds`` are checked against the list (module docstring).
    """

    def __init__(
        self,
        redis: aioredis.Redis | RedisCluster,
        keys: Keys,
        *,
        buffer_tokens: int = 1024,
        subscribe_timeout: float = 10.0,
        linger_seconds: float = 5.0,
        resync_seconds: float = 5.0,
        coalesce_seconds: float = 0.0,
    ) -> None:
        self._keys = keys
        # Reads only (the checks of quiet jobs), on the same client; it never ends a job. The
        # store is typed for a single Redis; the cluster client has the same commands.
        self._store = JobStore(cast(aioredis.Redis, redis), keys, retention_seconds=0)
        self._buffer_tokens = buffer_tokens
        self._subscribe_timeout = subscribe_timeout
        self._linger_seconds = linger_seconds
        self._resync_seconds = resync_seconds
        self._coalesce_seconds = coalesce_seconds
        self._swept_at = 0.0
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
        channel = self._keys.channel(job_id)
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
            await asyncio.sleep(1.0)
            await self._sweep(time.monotonic())

    async def _sweep(self, now: float) -> None:
        """Once a second: check quiet feeds, unsubscribe feeds nobody held for a while."""
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
        progress = await self._store.progress([self._job_id(feed) for feed in feeds])
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
            snap = await self._store.read(self._job_id(feed), offset, count - offset)
        except JobNotFound:
            feed.resync()
            return
        if feed.version != version or feed.epoch != epoch:
            return  # news came meanwhile; the next check looks again if needed
        log.info("%s: missed news read from the list (up to offset %d)", feed.channel, count)
        if snap.tokens:
            feed.push(Batch(snap.offset, snap.tokens, snap.ts))
        if snap.done:
            feed.finish(snap.end())

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
            feed.finish(notice)
        else:
            feed.announce(notice)

    def lost(self, channels: Collection[str]) -> None:
        """Notifications on ``channels`` may be missed until they are confirmed again."""
        for channel in channels:
            self._expected.pop(channel, None)
            feed = self._feeds.get(channel)
            if feed is not None:
                feed.disconnected()
