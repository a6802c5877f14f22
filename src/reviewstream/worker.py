"""Worker: claims queued jobs and streams each one's model output into the store.

A worker reads the queue (a Redis stream, consumer group ``workers``) only while it has a free
slot (``REVIEWSTREAM_WORKER_CONCURRENCY``). Claiming a job acknowledges its queue entry and gives
the worker a lease in the same atomic step; the lease is renewed while the job streams. Entries
read by a worker that died before claiming them are taken over by another worker after
``claim_idle_seconds``; jobs whose lease lapsed (the worker died mid-stream) are ended as failed
by any worker's reaper. A job ended by someone else (a cancel, the reaper) is noticed through
the hub at once, and its upstream stream is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid

import httpx

from .errors import JobNotFound, ProviderError, ReviewstreamError, StoreError
from .hub import Feed, Hub
from .models import JobStatus, ReviewRequest, Usage
from .providers import build_prompt, build_provider
from .providers.base import Provider
from .providers.resilience import resilient_stream
from .settings import Settings
from .store import JobStore, QueueEntry

log = logging.getLogger(__name__)


class Worker:
    """Runs up to ``concurrency`` jobs at once from the shared queue.

    ``start()`` begins claiming; ``aclose()`` stops claiming, gives running jobs
    ``grace_seconds`` (default ``REVIEWSTREAM_WORKER_GRACE_SECONDS``) to finish, then cancels
    the rest and ends them as failed.
    """

    def __init__(
        self,
        store: JobStore,
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
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._lease_ms = int(settings.lease_seconds * 1000)
        self._stopping = asyncio.Event()

    @property
    def running(self) -> int:
        return len(self._jobs)

    async def start(self) -> None:
        await self.store.ensure_group()
        await self._beat()  # ready to take jobs from now on: API processes may accept them
        self._loops = [
            asyncio.create_task(self._claim_loop(), name=f"worker-claim-{self.name}"),
            asyncio.create_task(self._reap_loop(), name=f"worker-reap-{self.name}"),
            asyncio.create_task(self._heartbeat_loop(), name=f"worker-heartbeat-{self.name}"),
        ]

    async def aclose(self) -> None:
        # Loops stop at the flag rather than by cancellation alone: a cancellation that lands
        # inside a Redis call can be turned into a connection error by the client library.
        self._stopping.set()
        if self._loops:
            self._loops[0].cancel()  # the claim loop may sit in a blocking queue read
        _, pending = await asyncio.wait(self._loops, timeout=2.0) if self._loops else ((), ())
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2.0)
        self._loops = []
        with contextlib.suppress(StoreError):
            await self.store.forget_worker(self.name)  # take no new jobs for this worker
        if self._jobs:
            log.info("worker %s: waiting for %d running jobs", self.name, len(self._jobs))
            await asyncio.wait(list(self._jobs.values()), timeout=self.grace_seconds)
        for job_id, task in list(self._jobs.items()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self._end_quietly(
                job_id, JobStatus.FAILED, "the worker shut down before the job finished"
            )

    # -- claiming -----------------------------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            await self._slots.acquire()
            try:
                entries = await self.store.next_entries(self.name, count=1, block_ms=1000)
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
            claimed = await self.store.claim(entry, self.name, self._lease_ms)
        except StoreError as e:
            log.warning("worker %s: claim of %s failed: %s", self.name, entry.job_id, e)
            claimed = False
        if not claimed:
            self._slots.release()
            return
        task = asyncio.create_task(self._run(entry.job_id), name=f"job-{entry.job_id}")
        self._jobs[entry.job_id] = task
        task.add_done_callback(lambda _t: self._job_done(entry.job_id))

    def _job_done(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)
        self._slots.release()

    async def _beat(self) -> None:
        forget_ms = int(self.settings.worker_heartbeat_timeout_seconds * 10_000)
        await self.store.heartbeat(self.name, forget_ms)

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
                interval = min(1.0, interval)
            else:
                interval = self.settings.worker_heartbeat_timeout_seconds / 3

    async def _reap_loop(self) -> None:
        min_idle_ms = int(self.settings.claim_idle_seconds * 1000)
        while not self._stopping.is_set():
            await self._pause(self.settings.reap_interval_seconds)
            try:
                for job_id in await self.store.reap_lapsed_leases():
                    log.warning("job %s failed: its worker's lease lapsed", job_id)
                if self._slots.locked():
                    continue
                for entry in await self.store.reclaim_entries(self.name, min_idle_ms, count=1):
                    await self._slots.acquire()
                    log.info("worker %s: took over abandoned entry of %s", self.name, entry.job_id)
                    await self._take(entry)
            except StoreError as e:
                log.warning("worker %s: reaping failed: %s", self.name, e)

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

    async def _run(self, job_id: str) -> None:
        try:
            async with self.hub.join(job_id) as feed:
                produce = asyncio.create_task(self._produce(job_id))
                guard = asyncio.create_task(self._guard(job_id, feed))
                try:
                    await asyncio.wait({produce, guard}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (guard, produce):
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
        except ReviewstreamError as e:
            log.warning("job %s: %s", job_id, e)
            await self._end_quietly(job_id, JobStatus.FAILED, f"job could not run: {e}")
        except Exception:
            log.exception("job %s: unexpected error", job_id)
            await self._end_quietly(job_id, JobStatus.FAILED, "internal error in the worker")

    async def _guard(self, job_id: str, feed: Feed) -> None:
        """Renew the lease on schedule; return as soon as the job is no longer ours to run."""
        interval = self.settings.lease_seconds / 3
        renew_at = time.monotonic() + interval
        while True:
            # Wakes on the end only, not on every token this job appends.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(feed.ended.wait(), max(renew_at - time.monotonic(), 0.0))
            if feed.end is not None:
                return  # ended by someone else: a cancel, or the reaper
            if time.monotonic() >= renew_at:
                if not await self.store.renew(job_id, self.name, self._lease_ms):
                    return
                renew_at = time.monotonic() + interval

    async def _produce(self, job_id: str) -> None:
        meta = await self.store.meta(job_id)
        request = ReviewRequest.model_validate_json(meta["request"])
        provider = self._provider(meta["provider"])
        prompt = build_prompt(request, meta["model"], self.settings)
        s = self.settings
        usage: Usage | None = None
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
                    elif item and not await self.store.append(job_id, self.name, [item]):
                        return  # cancelled or reaped meanwhile: stop and close the upstream
        except ProviderError as e:
            log.info("job %s failed upstream: %s", job_id, e)
            await self.store.finish(job_id, JobStatus.FAILED, error=str(e), owner=self.name)
            return
        await self.store.finish(
            job_id,
            JobStatus.DONE,
            usage=usage.model_dump() if usage is not None else None,
            owner=self.name,
        )

    async def _end_quietly(self, job_id: str, status: JobStatus, error: str) -> None:
        with contextlib.suppress(ReviewstreamError, JobNotFound):
            await self.store.finish(job_id, status, error=error, owner=self.name)
