"""Following a job from offset N: the one machinery every live delivery mode uses.

A ``Follower`` is built on the job's feed once the hub has joined it (subscribed and
confirmed: ``ReviewService.follow``), and its ``start`` reads the list from N, so there is no
gap between "read history" and "listen". Its ``next`` then returns ``Batch``es in offset order,
each token exactly once, and last one ``JobEnd``; a ``JobNotice`` heard while following (an
attempt lost, a new one begun) comes once the follower has every token stored before it. It
takes tokens from the feed's shared buffer while it keeps up and reads the list in pages when it
does not (joining late, a slow client, a notification lost to a reconnect). An offset past the
end waits.
A waiting follower leaves its offset on the feed and costs nothing else: the hub checks a quiet
job once for all its waiters (``hub``), and wakes them only when they missed something.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ServerDraining
from .hub import Feed
from .models import Batch, JobEnd, JobNotice
from .store import JobStore


@dataclass(frozen=True, slots=True)
class FollowOptions:
    page_size: int = 256


class Follower:
    """``Batch``es then one ``JobEnd`` (and any ``JobNotice`` between), from a start offset."""

    def __init__(
        self, store: JobStore, feed: Feed, job_id: str, offset: int, options: FollowOptions
    ) -> None:
        self.job_id = job_id
        self.offset = offset
        self._store = store
        self._feed = feed
        self._options = options
        self._epoch = -1  # the feed epoch our last list read was made in; -1: never read
        self._pending: Batch | JobEnd | None = None
        self._notices = feed.notices  # notices heard before we came are not ours to tell
        # The end of a job that had ended when a list read brought its last tokens: its end was
        # announced before, and nothing will announce it again.
        self._read_end: JobEnd | None = None
        self.reached_end = False  # the job's end was returned: nothing follows it

    @property
    def tenant(self) -> str:
        """Who created the job (known after ``start``)."""
        return self._feed.tenant or ""

    @property
    def attempts(self) -> int:
        """Attempts the job has started, as far as this process knows."""
        return self._feed.attempts

    @property
    def known_end(self) -> JobEnd | None:
        """The job's end, if known here: announced on the feed, or read with its last tokens
        (a job that had ended before this follower came)."""
        return self._feed.end or self._read_end

    async def start(self) -> None:
        """Read the list once, unless the feed already holds everything from our offset.

        Raises ``JobNotFound`` for an unknown or expired job.
        """
        feed = self._feed
        if feed.confirmed.is_set() and feed.tenant is not None and feed.covers(self.offset):
            self._epoch = self._feed.epoch  # a warm feed: no Redis command for this follower
            return
        self._pending = await self._read()

    async def _read(self) -> Batch | JobEnd | None:
        """Read the list from our offset: a batch, the end, or None when caught up."""
        await self._feed.confirmed.wait()
        epoch = self._feed.epoch
        snap = await self._store.read(self.job_id, self.offset, self._options.page_size)
        self._feed.tenant = snap.tenant
        self._feed.attempts = max(self._feed.attempts, snap.attempts)
        if snap.tokens:
            # More may be stored beyond this page: read again before trusting the feed.
            if len(snap.tokens) < self._options.page_size:
                self._epoch = epoch
            if snap.done:
                self._read_end = snap.end()
            return Batch(snap.offset, snap.tokens, snap.ts)
        self._epoch = epoch
        if snap.done or (snap.status.terminal and self.offset >= snap.count):
            return snap.end()
        return None

    async def next(self) -> Batch | JobEnd | JobNotice:
        """The next batch from our offset, a notice, or the end; waits while nothing is new.

        Raises ``ServerDraining`` once this server begins shutting down.
        """
        if self._pending is not None:
            item, self._pending = self._pending, None
            return self._advance(item)
        if self._read_end is not None:
            return self._advance(self._read_end)
        feed, options = self._feed, self._options
        while True:
            if feed.draining:
                raise ServerDraining()
            version = feed.version
            if self._epoch != feed.epoch:
                got = await self._read()
                if got is not None:
                    return self._advance(got)
                continue
            batch = feed.tokens_from(self.offset, options.page_size)
            if batch is None:  # fell behind the buffer
                self._epoch = -1
                continue
            if batch.tokens:
                return self._advance(batch)
            end = feed.end
            if end is not None:
                if self.offset >= end.next_offset:
                    return self._advance(end)
                self._epoch = -1  # the end says there is more than we saw: read the list
                continue
            if self._notices != feed.notices and feed.notice is not None:
                self._notices = feed.notices
                if self.offset >= feed.notice.offset:
                    return feed.notice
            await feed.changed(version, self.offset)

    def _advance(self, item: Batch | JobEnd) -> Batch | JobEnd:
        if isinstance(item, Batch):
            self.offset = item.next_offset
        else:
            self.reached_end = True
        return item
