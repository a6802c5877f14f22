"""The reaper: what dead or stuck processes left, repaired by every process on every shard."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ..errors import JobNotFound, StoreError
from ..models import JobStatus
from ..settings import Settings
from ..store import Requeue, Store
from .handover import let_go

log = logging.getLogger(__name__)


class Reaper:
    """Repairs what dead or stuck processes left, in every process (API-only ones too), on
    every queue shard.

    - Lapsed leases: a running job whose producer stopped renewing goes back to the queue (or
      fails when its attempts are spent); the shard's script acts for exactly one process. A
      lease left behind by an attempt that ended (the second step of its end never ran) is
      dropped.
    - Queued jobs that no worker started within ``REVIEWSTREAM_QUEUED_TIMEOUT_SECONDS`` of
      entering the queue end as failed (so does a job whose requeue was left half done and
      whose entry nobody claimed within that time).

    Each queue shard on its own: one that cannot be read (its Redis Cluster master down) holds
    back no other, and a job that cannot be acted on (its own master down) no other job. After
    a shard could not be read, its lapsed leases are left alone for one lease period, so that
    producers that kept their tokens through the outage renew first.
    """

    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # monotonic, per shard: its lapsed leases are left alone before it
        self._leases_after = dict.fromkeys(store.keys.shards, 0.0)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reviewstream-reaper")

    async def aclose(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=2.0)
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.reap_interval_seconds):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return
            for shard in self._store.keys.shards:
                try:
                    if time.monotonic() >= self._leases_after[shard]:
                        await self.reap_leases(shard)
                    await self.reap_queued(shard)
                except StoreError as e:
                    log.warning("reaping queue shard %d failed: %s", shard, e)
                    self._leases_after[shard] = time.monotonic() + self._settings.lease_seconds

    async def reap_leases(self, shard: int | None = None) -> list[str]:
        """Requeue (or fail) every running job whose lease lapsed (on ``shard``, or on each);
        returns the ids acted on."""
        acted = []
        for lease in await self._store.queue.lapsed_leases(shard=shard):
            try:
                outcome = await let_go(
                    self._store,
                    self._settings,
                    lease.job_id,
                    "worker lost: its lease lapsed before the job finished",
                    attempt=lease.attempt,
                    only_if_lease_lapsed=True,
                )
            except JobNotFound:
                await self._store.queue.drop_lease(lease)
                continue
            except StoreError as e:  # this job's keys cannot be reached: the next round retries
                log.warning("job %s: its lapsed lease stays for now: %s", lease.job_id, e)
                continue
            if outcome is not Requeue.NOTHING:
                acted.append(lease.job_id)
                log.warning("job %s: its worker's lease lapsed (%s)", lease.job_id, outcome.name)
        return acted

    async def reap_queued(self, shard: int | None = None) -> list[str]:
        """Fail every job queued longer than the timeout (on ``shard``, or on each); returns
        their ids. Every entry past it is dropped (an attempt whose claim was cut before its
        lease gets it first)."""
        timeout = self._settings.queued_timeout_seconds
        cutoff_ms = int((time.time() - timeout) * 1000)
        failed = []
        for entry in await self._store.queue.queued_before(cutoff_ms, count=100, shard=shard):
            # Only the job this entry queued: at the attempt it names, still queued (or still
            # running the attempt it says was lost: a requeue left half done).
            statuses = (JobStatus.QUEUED, JobStatus.RUNNING) if entry.attempt else JobStatus.QUEUED
            try:
                if await self._store.end(
                    entry.job_id,
                    JobStatus.FAILED,
                    error=f"no worker started the job within {timeout:g} s of queueing it",
                    only_if_status=statuses,
                    attempt=entry.attempt,
                ):
                    failed.append(entry.job_id)
                    log.warning("job %s failed: queued for over %g s", entry.job_id, timeout)
            except JobNotFound:
                pass
            except StoreError as e:  # this job's keys cannot be reached: the next round retries
                log.warning("job %s: its old queue entry stays for now: %s", entry.job_id, e)
                continue
            await self._store.retire(entry, int(self._settings.lease_seconds * 1000))
        return failed
