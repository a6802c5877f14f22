"""Worker: claims queued jobs and streams each one's model output into the store.

A worker reads the queue (Redis streams, one per shard, consumer group ``workers``) only while it
has a free slot (``REVIEWSTREAM_WORKER_CONCURRENCY``): one reader per shard, each holding a slot
while it blocks on its shard. Claiming a job starts the job's next attempt under the worker,
then acknowledges its queue entry and gives the attempt its lease; the leases of all running
jobs are renewed together, one batch per interval (``Store.renew_all``), while they stream.
Their tokens go to Redis together too: ``appends.Appends``, one round trip per flush, each
token stamped on the Redis clock (``clock.RedisClock``, set by every heartbeat) the moment the
provider hands it over. Entries read by a worker that died before claiming them (or between the two
steps of a claim) are taken over by another worker after ``claim_idle_seconds``.

A job is finished, not failed, when its producer is lost: a lapsed lease (found by the
``Reaper`` that every process runs), a worker shutting down after its grace, or Redis failing
under the producer for longer than ``REVIEWSTREAM_REDIS_OUTAGE_SECONDS`` all put the job back in
the queue (``handover.let_go``), and its next attempt continues after the stored text. Each
attempt writes under its own owner token, so a producer that comes back after it was given up
writes nothing.
A job ended by someone else (a cancel, the reaper) is noticed through the hub at once, and its
upstream stream is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid

import httpx

from ..errors import (
    JobNotFound,
    ProviderError,
    ReviewstreamError,
    StoreError,
    UpstreamInterrupted,
)
from ..hub import Hub
from ..models import JobStatus, ReviewRequest, Usage
from ..providers import build_prompt, build_provider
from ..providers.base import Provider
from ..providers.resilience import resilient_stream
from ..settings import Settings
from ..store import Claim, QueueEntry, Renewal, Requeue, Store
from .appends import Appends
from .clock import RedisClock
from .handover import let_go, max_attempts

log = logging.getLogger(__name__)


class Worker:
    """Runs up to ``concurrency`` jobs at once from the shared queue.

    ``start()`` begins claiming. ``begin_shutdown()`` (from a signal handler) stops claiming and
    starts the grace period; ``aclose()`` lets running jobs run until it ends, then hands the
    rest over: each goes back to the queue for another worker to continue.
    """

    def __init__(
        self,
        store: Store,
        hub: Hub,
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        grace_seconds: float | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.settings = settings
        self.http = http
        self.grace_seconds = (
            settings.worker_grace_seconds if grace_seconds is None else grace_seconds
        )
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._slots = asyncio.Semaphore(settings.worker_concurrency)
        self._providers: dict[str, Provider] = {}
        # Running attempts by (job, owner token), not by job: this worker may still be letting go
        # of a job's lost attempt when it claims the next one, and each has its own lease.
        self._jobs: dict[tuple[str, str], tuple[Claim, asyncio.Task[None]]] = {}
        # Set by the lease renewals when an attempt is no longer its to run.
        self._halts: dict[tuple[str, str], asyncio.Future[None]] = {}
        self.clock = RedisClock()
        self.appends = Appends(
            store.jobs,
            self.clock.now,
            flush_ms=settings.append_flush_ms,
            outage_seconds=settings.redis_outage_seconds,
        )
        self._loops: list[asyncio.Task[None]] = []
        self._readers: list[asyncio.Task[None]] = []  # the claim loops, one per shard
        self._lease_ms = int(settings.lease_seconds * 1000)
        self._stopping = asyncio.Event()
        self._hand_over_at: float | None = None  # monotonic time the grace period ends
        self._renewer: asyncio.Task[None] | None = None

    @property
    def running(self) -> int:
        return len(self._jobs)

    async def start(self) -> None:
        await self.store.queue.ensure_group()
        await self._beat()  # ready to take jobs from now on: API processes may accept them
        self.appends.start()
        self._readers = [
            asyncio.create_task(self._claim_loop(shard), name=f"worker-claim-{shard}-{self.name}")
            for shard in self.store.keys.shards
        ]
        self._loops = [
            *self._readers,
            asyncio.create_task(self._reclaim_loop(), name=f"worker-reclaim-{self.name}"),
            asyncio.create_task(self._heartbeat_loop(), name=f"worker-heartbeat-{self.name}"),
        ]
        # Not one of the loops: running jobs keep their leases through the grace period.
        self._renewer = asyncio.create_task(self._renew_loop(), name=f"worker-renew-{self.name}")

    def begin_shutdown(self) -> None:
        """Stop claiming now; running jobs may finish within the grace period from now on."""
        if self._hand_over_at is None:
            self._hand_over_at = time.monotonic() + self.grace_seconds
        self._stopping.set()
        for reader in self._readers:
            reader.cancel()  # it may sit in a blocking queue read

    async def aclose(self) -> None:
        self.begin_shutdown()
        # Loops stop at the flag rather than by cancellation alone: a cancellation that lands
        # inside a Redis call can be turned into a connection error by the client library.
        _, pending = await asyncio.wait(self._loops, timeout=1.0) if self._loops else ((), ())
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        self._loops, self._readers = [], []
        with contextlib.suppress(StoreError):
            await self.store.workers.forget_worker(self.name)  # take no new jobs for this worker
        assert self._hand_over_at is not None
        remaining = self._hand_over_at - time.monotonic()
        if self._jobs and remaining > 0:
            log.info("worker %s: waiting %.1f s for %d jobs", self.name, remaining, self.running)
            await asyncio.wait([task for _, task in self._jobs.values()], timeout=remaining)
        for claim, task in list(self._jobs.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self._let_go(claim, "the worker shut down before the job finished")
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        await self.appends.aclose()

    # -- claiming -----------------------------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    async def _claim_loop(self, shard: int) -> None:
        """Read one shard's queue: a blocking read (one command a second while idle) holding a
        free slot, so a worker with every slot busy reads nothing."""
        while not self._stopping.is_set():
            await self._slots.acquire()
            try:
                entries = await self.store.queue.next_entries(
                    self.name, count=1, block_ms=1000, shard=shard
                )
            except StoreError as e:
                self._slots.release()
                log.warning("worker %s: reading the queue failed: %s", self.name, e)
                await self._pause(1.0)
                continue
            if not entries or self._stopping.is_set():
                self._slots.release()
                continue  # an entry read now stays pending; another worker reclaims it
            await self._take(entries[0])

    async def _take(self, entry: QueueEntry) -> None:
        """Claim one entry while holding a slot; the slot is released when the job ends."""
        try:
            claim = await self.store.claim(
                entry,
                self.name,
                self._lease_ms,
                reset=self.settings.on_producer_loss == "restart",
                max_attempts=max_attempts(self.settings),
            )
        except StoreError as e:
            log.warning("worker %s: claim of %s failed: %s", self.name, entry.job_id, e)
            claim = None
        if claim is None:
            self._slots.release()
            return
        if claim.attempt > 1:
            log.info("job %s: attempt %d from %d", claim.job_id, claim.attempt, claim.offset)
        task = asyncio.create_task(self._run(claim), name=f"job-{claim.job_id}")
        self._jobs[claim.job_id, claim.owner] = (claim, task)
        task.add_done_callback(lambda _t: self._job_done(claim))

    def _job_done(self, claim: Claim) -> None:
        self._jobs.pop((claim.job_id, claim.owner), None)
        self._slots.release()

    async def _beat(self) -> None:
        """Announce this worker; set its Redis clock by the heartbeat's round trip."""
        forget_ms = int(self.settings.worker_heartbeat_timeout_seconds * 10_000)
        sent = time.time()
        redis_time = await self.store.workers.heartbeat(self.name, forget_ms)
        self.clock.measured(redis_time, sent, time.time())

    async def _heartbeat_loop(self) -> None:
        """Announce this worker every third of the heartbeat window (sooner after a failure)."""
        interval = self.settings.worker_heartbeat_timeout_seconds / 3
        while not self._stopping.is_set():
            await self._pause(interval)
            if self._stopping.is_set():
                return
            try:
                await self._beat()
            except StoreError as e:
                log.warning("worker %s: heartbeat failed: %s", self.name, e)
                interval = min(0.5, interval)  # announce again as soon as Redis is back
            else:
                interval = self.settings.worker_heartbeat_timeout_seconds / 3

    async def _reclaim_loop(self) -> None:
        """Take over queue entries read by a worker that died before claiming them."""
        min_idle_ms = int(self.settings.claim_idle_seconds * 1000)
        while not self._stopping.is_set():
            await self._pause(self.settings.reap_interval_seconds)
            for shard in self.store.keys.shards:  # one shard failing (its master down) or not
                try:
                    await self._reclaim(shard, min_idle_ms)
                except StoreError as e:
                    log.warning("worker %s: reclaiming on shard %d failed: %s", self.name, shard, e)

    async def _reclaim(self, shard: int, min_idle_ms: int) -> None:
        """Take over one abandoned entry of ``shard`` when a slot is free."""
        if self._stopping.is_set() or self._slots.locked():
            return
        for entry in await self.store.queue.reclaim_entries(self.name, min_idle_ms, 1, shard=shard):
            if self._stopping.is_set():
                return  # it stays pending: another worker reclaims it
            await self._slots.acquire()
            log.info("worker %s: took over abandoned entry of %s", self.name, entry.job_id)
            await self._take(entry)

    # -- running one job ----------------------------------------------------------------------

    def _provider(self, name: str) -> Provider:
        provider = self._providers.get(name)
        if provider is None:
            provider = self._providers[name] = build_provider(
                name,  # type: ignore[arg-type]
                self.settings,
                self.http,
            )
        return provider

    async def _run(self, claim: Claim) -> None:
        job_id = claim.job_id
        halt = self._halts[job_id, claim.owner] = asyncio.get_running_loop().create_future()
        try:
            async with self.hub.join(job_id) as feed:
                produce = asyncio.create_task(self._produce(claim))
                # Wakes on the end only, not on every token this job appends: ended by someone
                # else (a cancel, the reaper).
                ended = asyncio.create_task(feed.ended.wait())
                try:
                    await asyncio.wait({produce, ended, halt}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (ended, produce):
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
        except StoreError as e:
            log.warning("job %s: attempt %d lost to Redis: %s", job_id, claim.attempt, e)
            await self._let_go(claim, f"Redis failed under the producer ({e})")
        except ReviewstreamError as e:
            log.warning("job %s: %s", job_id, e)
            await self._end_quietly(claim, JobStatus.FAILED, f"job could not run: {e}")
        except Exception:
            log.exception("job %s: unexpected error", job_id)
            await self._end_quietly(claim, JobStatus.FAILED, "internal error in the worker")
        finally:
            del self._halts[job_id, claim.owner]
            halt.cancel()

    async def _renew_loop(self) -> None:
        """Renew the leases of every running job together, one batch per interval; stop each
        job that is no longer ours to run.

        A batch that fails for some jobs (Redis unreachable; on a cluster, one master down)
        is retried for all soon; whether a lease lapsed meanwhile is judged in Redis, by Redis
        time, once it answers again.
        """
        interval = self.settings.lease_seconds / 3
        abandon_ms = int(self.settings.abandon_seconds * 1000)
        while True:
            await asyncio.sleep(interval)
            claims = [claim for claim, _ in self._jobs.values()]
            if not claims:
                continue
            found = await self.store.renew_all(claims, self._lease_ms, abandon_ms)
            failed = [f for f in found if isinstance(f, StoreError)]
            for claim, renewal in zip(claims, found, strict=True):
                if renewal is Renewal.LOST:
                    self._halt(claim)
                elif renewal is Renewal.ABANDONED:
                    log.info("job %s: abandoned, cancelling it", claim.job_id)
                    await self._end_quietly(
                        claim,
                        JobStatus.CANCELLED,
                        "abandoned: nobody followed or polled the job for"
                        f" {self.settings.abandon_seconds:g} s",
                    )
                    self._halt(claim)
            if failed:
                log.warning("lease renewal of %d jobs failed: %s", len(failed), failed[0])
                interval = min(self.settings.lease_seconds / 3, 0.5)
            else:
                interval = self.settings.lease_seconds / 3

    def _halt(self, claim: Claim) -> None:
        """Stop the job's producer: the attempt is no longer ours to run."""
        halt = self._halts.get((claim.job_id, claim.owner))
        if halt is not None and not halt.done():
            halt.set_result(None)

    async def _produce(self, claim: Claim) -> None:
        job_id = claim.job_id
        meta = await self.store.jobs.meta(job_id)
        request = ReviewRequest.model_validate_json(meta["request"])
        provider = self._provider(meta["provider"])
        continuation = ""
        if claim.offset and self.settings.on_producer_loss == "continue":
            continuation = "".join(await self.store.jobs.text(job_id))
        prompt = build_prompt(request, meta["model"], self.settings, continuation=continuation)
        s = self.settings
        usage: Usage | None = None
        writer = self.appends.writer(claim)
        try:
            stream = resilient_stream(
                provider,
                prompt,
                max_retries=s.upstream_max_retries,
                backoff_base=s.upstream_backoff_base,
                backoff_max=s.upstream_backoff_max,
                first_token_timeout=s.upstream_first_token_timeout,
                idle_timeout=s.upstream_idle_timeout,
            )
            # aclosing: leaving the loop early closes the upstream stream now, not at GC.
            async with contextlib.aclosing(stream) as items:
                async for item in items:
                    if isinstance(item, Usage):
                        usage = item
                    elif item:
                        # False: cancelled, requeued or reaped: stop, close the upstream.
                        if not writer.put(item) or (writer.stalled and not await writer.drain()):
                            return
            if not await writer.drain():  # the end goes after the last token
                return
        except ProviderError as e:
            if not await writer.drain():
                return
            wrote = writer.offset > claim.offset
            if wrote and (e.retryable or isinstance(e, UpstreamInterrupted)):
                # The upstream broke after this attempt wrote something: the next attempt
                # continues after it, as if the worker had died.
                log.info("job %s: upstream broke mid-stream: %s", job_id, e)
                await self._let_go(claim, f"upstream broke mid-stream ({e})")
                return
            log.info("job %s failed upstream: %s", job_id, e)
            earlier = json.loads(meta.get("causes") or "[]")
            error = f"{e}; earlier: {'; '.join(earlier)}" if earlier else str(e)
            await self.store.end(job_id, JobStatus.FAILED, error=error, owner=claim.owner)
            return
        finally:
            self.appends.forget(writer)
        await self.store.end(
            job_id,
            JobStatus.DONE,
            usage=usage.model_dump() if usage is not None else None,
            owner=claim.owner,
        )

    async def _let_go(self, claim: Claim, cause: str) -> None:
        job_id = claim.job_id
        try:
            outcome = await let_go(
                self.store, self.settings, job_id, cause, owner=claim.owner, attempt=claim.attempt
            )
        except (ReviewstreamError, JobNotFound) as e:
            log.warning("job %s: not handed over (%s); its lease will lapse", job_id, e)
            return
        if outcome is Requeue.QUEUED:
            log.info("job %s: handed over after attempt %d (%s)", job_id, claim.attempt, cause)

    async def _end_quietly(self, claim: Claim, status: JobStatus, error: str) -> None:
        with contextlib.suppress(ReviewstreamError, JobNotFound):
            await self.store.end(claim.job_id, status, error=error, owner=claim.owner)
