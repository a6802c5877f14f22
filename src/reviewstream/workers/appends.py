"""Appends: a worker's group commit — the tokens of all its running jobs to Redis in one round
trip per flush.

Each running attempt writes through a ``JobWriter``: the producer ``put``s each token as the
provider hands it over (stamped then, on the Redis clock: ``workers.clock``) and goes on; the
worker's one flusher task sends what every writer holds as one pipeline of APPEND calls (one per
master on a Redis Cluster), one call per job carrying all of that job's new tokens, so one
notice per job per flush. A flush starts as soon as the loop is idle after a token arrives (the
producers woken in the same turn add theirs first), one at a time, and no sooner than
``REVIEWSTREAM_APPEND_FLUSH_MS`` after the previous one started: tokens that arrive meanwhile
wait for the next.

What a job's append guaranteed alone, it keeps in a flush:

- **Order.** A writer's tokens leave in the order put, from the offset after the ones stored;
  a flush holds at most one call per job, and the next flush sends only what follows a reply.
- **Exactly once.** Every call names its offset. A round trip that fails (Redis away, a
  connection cut) leaves the writer's tokens in hand, and the next flush sends them again with
  whatever came since, from the same offset: APPEND stores only what it does not hold yet.
  Each job retries with backoff (50 ms doubling to 1 s) for up to
  ``REVIEWSTREAM_REDIS_OUTAGE_SECONDS``, as an append retried alone did; past it, the producer
  gets the ``StoreError`` and the job is handed over.
- **Fencing.** A call is refused for its own job only (ended, cancelled, requeued, another
  attempt's): that writer is refused, its producer learns it at its next ``put`` (False) or
  ``drain``, and stops; the other jobs of the flush are stored.
- **The end after the last token.** A producer ``drain``s its writer (every token stored)
  before it writes its end.

Backpressure: a writer that is failing, or holds ``MAX_APPEND_BATCH`` tokens, is ``stalled``;
its producer then waits in ``drain`` (the upstream waits with it, as it did for an append
retried alone). A writer closed (``forget``: its attempt ended, was cancelled or handed over)
drops what it holds: the tokens a next attempt needs, it writes again after the stored ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from ..errors import StoreError
from ..store import MAX_APPEND_BATCH, Append, Claim, JobStore, Lane, appended

log = logging.getLogger(__name__)

_FIRST_DELAY = 0.05
_MAX_DELAY = 1.0


class JobWriter:
    """One attempt's tokens on their way to Redis, in order (``Appends.writer`` makes it)."""

    __slots__ = (
        "_appends",
        "_drained",
        "claim",
        "closed",
        "delay",
        "error",
        "failing_since",
        "key",
        "last_stamp",
        "offset",
        "refused",
        "retry_at",
        "stamps",
        "tokens",
    )

    def __init__(self, appends: Appends, claim: Claim) -> None:
        self._appends = appends
        self.claim = claim
        self.key = (claim.job_id, claim.owner)  # the attempt's: owner tokens repeat across jobs
        self.offset = claim.offset  # where ``tokens[0]`` goes: every token before is stored
        self.tokens: list[str] = []
        self.stamps: list[str] = []
        self.last_stamp = 0.0
        self.refused = False
        self.closed = False
        self.error: StoreError | None = None
        self.failing_since: float | None = None  # loop time of the first failed round trip
        self.retry_at = 0.0
        self.delay = _FIRST_DELAY
        self._drained: asyncio.Future[None] | None = None

    @property
    def stalled(self) -> bool:
        """Its producer should ``drain`` before the next token: Redis fails under it, or it
        holds as many tokens as one append carries."""
        return self.failing_since is not None or len(self.tokens) >= MAX_APPEND_BATCH

    def put(self, token: str) -> bool:
        """Hand over one token, stamped now; it is stored at the next flush. False when the
        job is no longer this attempt's to write (the producer should stop); ``StoreError``
        when storing failed for good."""
        if self.error is not None:
            raise self.error
        if self.refused:
            return False
        stamp = self._appends.clock()
        if stamp < self.last_stamp:  # a job's times never go back, whatever the clock does
            stamp = self.last_stamp
        self.last_stamp = stamp
        self.tokens.append(token)
        self.stamps.append(f"{stamp:.6f}")
        self._appends.pending(self)
        return True

    async def drain(self) -> bool:
        """Wait until every token put is stored: True; False when the attempt was refused;
        ``StoreError`` when storing failed for good."""
        while self.tokens and not self.refused and self.error is None:
            if self._drained is None or self._drained.done():
                self._drained = asyncio.get_running_loop().create_future()
            await self._drained
        if self.error is not None:
            raise self.error
        return not self.refused

    def _settled(self) -> None:
        """Wake a producer waiting in ``drain`` (a flush answered for this writer)."""
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)


class Appends:
    """A worker's group commit: every running job's tokens, one round trip per flush.

    ``clock``: the Redis clock tokens are stamped with. ``flush_ms``: the least time between
    the starts of two flushes. ``outage_seconds``: how long a job's tokens are retried while
    Redis fails. ``flushes`` counts the flushes sent.
    """

    def __init__(
        self,
        jobs: JobStore,
        clock: Callable[[], float],
        *,
        flush_ms: float,
        outage_seconds: float,
    ) -> None:
        self.jobs = jobs
        self.clock = clock
        self.interval = flush_ms / 1000
        self.outage_seconds = outage_seconds
        self.flushes = 0
        # Writers holding tokens, by (job, owner token): a job's lost attempt may still be
        # letting go here when its next attempt writes.
        self._waiting: dict[tuple[str, str], JobWriter] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # One flush at a time: on a single Redis, every flush goes on one held connection.
        self._lane = Lane(jobs.redis)

    def writer(self, claim: Claim) -> JobWriter:
        return JobWriter(self, claim)

    def pending(self, writer: JobWriter) -> None:
        """``writer`` holds tokens to send."""
        if not writer.closed:
            self._waiting[writer.key] = writer
            self._wake.set()

    def forget(self, writer: JobWriter) -> None:
        """Close ``writer``: what it holds is dropped (its attempt is over)."""
        writer.closed = True
        writer.tokens.clear()
        writer.stamps.clear()
        if self._waiting.get(writer.key) is writer:
            del self._waiting[writer.key]
        writer._settled()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="worker-appends")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._lane.aclose()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last = float("-inf")
        while True:
            self._wake.clear()
            due = min((w.retry_at for w in self._waiting.values()), default=None)
            if due is None:
                await self._wake.wait()
                continue
            start = max(due, last + self.interval)
            now = loop.time()
            if start > now:
                if due > last + self.interval:
                    # Only writers in backoff wait: a token of another job may come first and
                    # be due sooner. Look again then.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(start):
                            await self._wake.wait()
                    continue
                # The next flush is due at ``start`` whatever arrives meanwhile: one timer, not
                # a wake-up per token.
                await asyncio.sleep(start - now)
            await asyncio.sleep(0)  # idle: the producers woken in this turn add their tokens
            last = loop.time()
            await self._flush(last)

    async def _flush(self, now: float) -> None:
        batch = [w for w in self._waiting.values() if w.retry_at <= now]
        if not batch:
            return  # what waited was dropped meanwhile (its attempt ended)
        sent = [min(len(w.tokens), MAX_APPEND_BATCH) for w in batch]
        appends = [
            Append(w.claim.job_id, w.claim.owner, w.offset, w.tokens[:n], w.stamps[:n])
            for w, n in zip(batch, sent, strict=True)
        ]
        self.flushes += 1
        replies = await self.jobs.append_batch(appends, lane=self._lane)
        failed: list[Exception] = []
        for writer, n, reply in zip(batch, sent, replies, strict=True):
            if writer.closed:
                continue
            if isinstance(reply, Exception):
                failed.append(reply)
                self._failed(writer, reply, now)
                continue
            try:
                stored = appended(writer.claim.job_id, reply, writer.offset)
            except StoreError as e:  # the job holds other tokens there: no retry mends that
                writer.error = e
                stored = False
            if stored:
                del writer.tokens[:n]
                del writer.stamps[:n]
                writer.offset += n
                writer.failing_since, writer.retry_at, writer.delay = None, 0.0, _FIRST_DELAY
            else:
                writer.refused = writer.error is None
                writer.tokens.clear()
                writer.stamps.clear()
            if not writer.tokens:
                del self._waiting[writer.key]
            writer._settled()
        if failed:
            log.warning("appends of %d jobs failed, retrying: %s", len(failed), failed[0])

    def _failed(self, writer: JobWriter, error: Exception, now: float) -> None:
        """A round trip failed for ``writer``: its tokens are retried later, or past the
        outage window its producer gets the error."""
        if writer.failing_since is None:
            writer.failing_since = now
        if now - writer.failing_since >= self.outage_seconds:
            if isinstance(error, StoreError):
                writer.error = error
            else:
                writer.error = StoreError("Redis failed during append tokens")
                writer.error.__cause__ = error
            del self._waiting[writer.key]
            writer._settled()
            return
        writer.retry_at = now + writer.delay
        writer.delay = min(writer.delay * 2, _MAX_DELAY)
