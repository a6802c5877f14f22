"""Store: a deployment's Redis as three parts — a job's keys (``jobs``), the queue shards and
their leases (``queue``), the worker registry (``workers``) — and the transitions that take a
job through the queue, each spanning a job and its shard.

Every script and every transaction names the keys of one slot, so a transition between a job and
its shard is two steps, one on each side, ordered so that a process dying between them leaves a
state that is completed later (by the next claim of the entry, or by a reaper), never a job
stuck: see each method, and ARCHITECTURE.md ("Redis data model"). The parts know nothing of each
other; the order of the two steps, and what repairs a cut between them, is kept here.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Collection, Sequence
from typing import Any

import redis.asyncio as aioredis

from ..errors import JobFinished, JobNotFound, StoreError
from ..keys import Keys
from ..models import JobStatus, ReviewRequest
from ..observe import metrics as observe
from .jobs import JobStore, new_job_id
from .queue import JobQueue
from .scripts.jobs import AttemptStart, Renewal, Requeue
from .streams import StreamStore
from .types import Claim, Lease, QueueEntry
from .workers import WorkerRegistry

log = logging.getLogger(__name__)


def spent_error(causes: Sequence[str]) -> str:
    """The error of a job that failed because its attempts were spent."""
    attempts = f"{len(causes)} attempt" + ("s" if len(causes) > 1 else "")
    return f"gave up after {attempts}: " + "; ".join(causes)


class Store:
    """The store every process builds on its Redis client (``runtime.job_store``).

    ``retention_seconds`` and ``sharded_pubsub``: the job store's (``JobStore``).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        *,
        retention_seconds: int,
        sharded_pubsub: bool = False,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.jobs = JobStore(
            redis, keys, retention_seconds=retention_seconds, sharded_pubsub=sharded_pubsub
        )
        self.queue = JobQueue(redis, keys)
        self.workers = WorkerRegistry(redis, keys)
        self.streams = StreamStore(redis, keys, sharded_pubsub=sharded_pubsub)

    async def create(
        self,
        request: ReviewRequest,
        *,
        provider: str,
        model: str,
        tenant: str = "",
        job_id: str | None = None,
        unclaimed_ttl_seconds: float | None = None,
    ) -> str:
        """Store a new queued job, then add its entry to its shard's queue; returns its id.

        Two steps, the job's then the shard's. Should the entry fail to be added, the job ends
        as failed. Should this process die between the two, the job's meta expires after
        ``unclaimed_ttl_seconds`` (a claim keeps it for good), so no job waits forever for an
        entry nobody added.
        """
        job_id = job_id or new_job_id()
        shard = self.keys.shard_of(job_id)
        await self.jobs.write(
            job_id,
            request,
            provider=provider,
            model=model,
            tenant=tenant,
            shard=shard,
            ttl_seconds=unclaimed_ttl_seconds,
        )
        try:
            await self.queue.enqueue(job_id, shard)
        except StoreError:
            with contextlib.suppress(StoreError, JobNotFound):
                await self.end(
                    job_id,
                    JobStatus.FAILED,
                    error="the job could not be queued: Redis failed",
                    only_if_status=JobStatus.QUEUED,
                    attempt=0,
                )
            raise
        observe.job_created()
        return job_id

    async def claim(
        self,
        entry: QueueEntry,
        worker: str,
        lease_ms: int,
        *,
        reset: bool = False,
        max_attempts: int = 3,
    ) -> Claim | None:
        """Take a queue entry: the job's next attempt runs under ``worker`` with a lease.

        Two steps: the job side starts the attempt (``JobStore.start_attempt``), then the shard
        side acknowledges the entry and gives the attempt its lease (``JobQueue.settle``). A
        process dying between them leaves the entry pending: its next claim (after
        ``JobQueue.reclaim_entries``) finds the attempt started and gives it its lease, which
        then lapses like any dead worker's.

        None when there is nothing to run: the job was cancelled, ended, claimed from this
        entry already, or moved on (the entry is dropped either way). An entry naming a lost
        attempt whose requeue was left half done completes that requeue first (or ends the job
        as failed when ``max_attempts`` were spent). ``reset``: the attempt starts the review
        over rather than continuing it (announced to followers).
        """
        start, reply = await self.jobs.start_attempt(
            entry, worker, reset=reset, max_attempts=max_attempts
        )
        claim: Claim | None = None
        lease: Lease | None = None
        if start is AttemptStart.STARTED:
            attempt, offset = int(reply[0]), int(reply[1])
            claim = Claim(entry.job_id, attempt, f"{worker}#{attempt}", offset, entry.shard)
            lease = claim.lease
            observe.attempt_started()
        elif start is AttemptStart.DELIVERED_TWICE:  # the attempt may still lack its lease
            lease = Lease(entry.job_id, int(reply[0]), entry.shard)
        elif start is AttemptStart.SPENT:
            await self.end(
                entry.job_id,
                JobStatus.FAILED,
                error=spent_error(json.loads(reply[0])),
                only_if_status=JobStatus.RUNNING,
                attempt=entry.attempt,
            )
        await self.queue.settle(entry, lease, lease_ms)
        return claim

    async def renew(self, claim: Claim, lease_ms: int, abandon_ms: int = 0) -> Renewal:
        """Extend the attempt's lease, unless the job is no longer its to run or was abandoned.

        The job side checks the attempt still runs the job, then the shard side extends the
        lease: ``LOST`` when a reaper took it meanwhile. (A cut between them changes nothing:
        the first step only reads.)
        """
        found = await self.jobs.renewal(claim.job_id, claim.owner, abandon_ms)
        if found is not Renewal.RENEWED:
            return found
        extended = await self.queue.extend(claim.lease, lease_ms)
        return Renewal.RENEWED if extended else Renewal.LOST

    async def renew_all(
        self, claims: Sequence[Claim], lease_ms: int, abandon_ms: int = 0
    ) -> list[Renewal | StoreError]:
        """``renew`` for many attempts (a worker's running jobs) in two round trips, whatever
        their number: every job side at once, then every shard side at once. Each attempt's
        ``Renewal``, or the ``StoreError`` one of its steps met (on a Redis Cluster, a master
        down fails the attempts whose job or shard it serves, no other). Each step waits at
        most a sixth of the lease for a master: one that is down, its calls retried, must not
        hold back the others' renewals until their leases lapse."""
        bound = lease_ms / 6000
        found = await self.jobs.renewals(
            [(c.job_id, c.owner) for c in claims], abandon_ms, master_seconds=bound
        )
        running = [i for i, f in enumerate(found) if f is Renewal.RENEWED]
        if running:
            extended = await self.queue.extend_all(
                [claims[i].lease for i in running], lease_ms, master_seconds=bound
            )
            for i, ok in zip(running, extended, strict=True):
                if isinstance(ok, StoreError):
                    found[i] = ok
                else:
                    found[i] = Renewal.RENEWED if ok else Renewal.LOST
        return found

    async def requeue(
        self,
        job_id: str,
        cause: str,
        *,
        max_attempts: int,
        owner: str = "",
        attempt: int | None = None,
        only_if_lease_lapsed: bool = False,
    ) -> tuple[Requeue, list[str]]:
        """Put a running job whose producer is lost back in the queue, naming the cause.

        The attempt lost is ``attempt`` (a lapsed lease names it), else the running one;
        ``owner``: only if that owner runs it; ``only_if_lease_lapsed``: only if its lease
        lapsed (the reapers). Two steps: the shard takes the attempt's lease and adds the entry
        for the next attempt (``JobQueue.take_lease``: exactly one process wins), then the job
        records the cause and is queued (``JobStore.requeue_attempt``). A process dying between
        them leaves the entry, whose claim completes the requeue.

        Returns ``QUEUED``; or ``SPENT`` with every attempt's cause when it had
        ``max_attempts`` already (it is ended as failed here, naming them); or ``NOTHING``
        (when the job does not run that attempt, a lease left behind for it is dropped).
        """
        now = await self.jobs.attempts(job_id)
        lease = Lease(job_id, now.attempt if attempt is None else attempt, now.shard)
        if now.status is not JobStatus.RUNNING or now.attempt != lease.attempt:
            if attempt is not None:
                await self.queue.drop_lease(lease)  # an attempt that ended or was requeued
            return Requeue.NOTHING, []
        if owner and now.owner != owner:
            return Requeue.NOTHING, []
        entry = await self.queue.take_lease(lease, cause, only_if_lapsed=only_if_lease_lapsed)
        if entry is None:
            return Requeue.NOTHING, []
        outcome, causes = await self.jobs.requeue_attempt(
            lease, cause, max_attempts=max_attempts, owner=owner
        )
        if outcome is Requeue.SPENT:
            await self.end(
                job_id,
                JobStatus.FAILED,
                error=spent_error(causes),
                only_if_status=JobStatus.RUNNING,
                attempt=lease.attempt,
            )
            await self.queue.drop_entry(entry)
        return outcome, causes

    async def end(
        self,
        job_id: str,
        status: JobStatus,
        *,
        error: str | None = None,
        usage: dict[str, Any] | None = None,
        owner: str = "",
        only_if_status: JobStatus | Collection[JobStatus] | None = None,
        attempt: int | None = None,
    ) -> bool:
        """End the job (after its last token) and announce the end, atomically, once; then
        drop the lease of the attempt it stopped.

        Every key of the job then expires after the retention. ``owner``, ``only_if_status``
        and ``attempt`` fence the end: only that attempt's owner, only in those statuses, only
        at that attempt. Two steps: the job's end (``JobStore.end``), then the lease is dropped
        from its shard (one left behind lapses and is dropped by a reaper). Returns True when
        this call ended the job; False when it had already ended (or the fence refused).
        """
        ended, lease = await self.jobs.end(
            job_id,
            status,
            error=error,
            usage=usage,
            owner=owner,
            only_if_status=only_if_status,
            attempt=attempt,
        )
        if ended:
            observe.job_ended(status)
        if lease is not None:
            try:
                await self.queue.drop_lease(lease)
            except StoreError as e:
                log.warning("job %s: its lease stays until it lapses: %s", job_id, e)
        return ended

    async def cancel(self, job_id: str) -> None:
        """End the job as cancelled; its producer notices and closes the upstream stream.
        ``JobFinished`` when it had ended already."""
        if not await self.end(job_id, JobStatus.CANCELLED, error="cancelled by request"):
            meta = await self.jobs.meta(job_id)
            raise JobFinished(job_id, meta["status"])

    async def retire(self, entry: QueueEntry, lease_ms: int) -> None:
        """Drop an entry nobody is to claim now (a reaper's, past the queued timeout).

        Should a claim of it have been cut between its two steps (the job runs the attempt
        after the one the entry names, maybe without a lease), that attempt gets its lease
        first, as the claim would have given it: it lapses if nobody runs the attempt.
        """
        lease = None
        with contextlib.suppress(JobNotFound):
            now = await self.jobs.attempts(entry.job_id)
            if now.status is JobStatus.RUNNING and now.attempt == entry.attempt + 1:
                lease = Lease(entry.job_id, entry.attempt + 1, entry.shard)
        await self.queue.settle(entry, lease, lease_ms)
