"""Feed: what one process knows of one job's live stream, shared by all its followers there.

A feed holds a small bounded buffer of the job's most recent notifications (which carry the
tokens and their offsets), the job's end once known, and one wake-up event that every waiting
follower shares. A caught-up follower takes its tokens from the buffer, so Redis does no work
per follower per token; a follower that falls behind the buffer reads the missing range from the
list in pages (``follow.Follower``). Nothing is queued per follower, so a slow client costs no
memory here.

The buffer is only trusted while the feed's subscription is unbroken: every subscribe
confirmation starts a new ``epoch``, empties the buffer and wakes the followers, who then
re-read the list from their own offsets; a lost subscription empties the buffer at once.

A waiting follower leaves its offset on the feed, and the feed keeps only the lowest since its
last wake-up: the hub checks a quiet feed against the list once for all its waiters
(``hub.Hub``), and only what some waiter was never told wakes them.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time

from ..models import Batch, JobEnd, JobNotice


class Feed:
    """What one process knows of one job's live stream; shared by all its followers there.

    Written by the hub (``resubscribed`` … ``resync``), read by followers (``covers`` …
    ``changed``). Every write that followers must see goes through one wake-up, which bumps
    ``version``: a follower that saw a version and then waits on it misses nothing.
    """

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
        """The subscription is lost: nothing in the buffer is trusted until it is confirmed."""
        self.confirmed.clear()
        self._batches.clear()
        self._ranges.clear()
        self._buffered = 0
        self._wake()

    def push(self, batch: Batch) -> None:
        """Tokens heard on the channel (or read by the hub's check), kept in offset order."""
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
        self._buffered += weight(batch)
        while self._buffered > self._max_tokens and len(self._batches) > 1:
            self._buffered -= weight(self._batches.popleft())
        if self._coalesce_seconds <= 0:
            self._wake()
        elif self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(self._coalesce_seconds, self._wake)

    def announce(self, notice: JobNotice) -> None:
        """A change of producer heard on the channel (an attempt lost, a new one begun)."""
        self.notice = notice
        self.notices += 1
        self.attempts = max(self.attempts, notice.attempt)
        self._wake()

    def job_ended(self, end: JobEnd) -> None:
        """The job's end, heard on the channel or read by the hub's check: the first counts."""
        if self.end is not None:
            return  # heard twice (a check found it before its notice arrived): one wake-up
        self.end = end
        self.ended.set()
        self._wake()

    def drain(self) -> None:
        """The server is shutting down: every follower stops."""
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
        at, so an idle follower holds nothing but its place in the shared wake-up.
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


def weight(batch: Batch) -> int:
    """What a batch costs the buffer: a token per token, and a token per KiB beyond its first
    (an outside Durable Stream's chunk is a whole append, up to megabytes), so that the buffer
    holds about ``max_tokens`` KiB at most, whatever writes the stream."""
    return sum(1 + len(token) // 1024 for token in batch.tokens)
