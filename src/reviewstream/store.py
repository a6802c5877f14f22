"""JobStore: the jobs on Redis, the single source of truth.

Per job J (all keys hash-tagged ``{J}``): a LIST of tokens (offset N = the number of tokens a
client already has), a parallel LIST of their append times, a HASH of metadata, and a pub/sub
channel on which every append and the end are announced with their offsets. The worker queue is
partitioned into shards (``Keys.queue_shards``), each a Redis stream with a consumer group, so an
accepted job stays pending until a worker claims it; each running attempt holds a lease in its
shard's sorted set, scored by deadline. A job is placed on one shard when it is created.

Every script and every transaction names the keys of one slot. A transition between a job and
its shard is two steps, one on each side, ordered so that a process dying between them leaves a
state that is completed later (by the next claim of the entry, or by a reaper), never a job
stuck: see each method, and ARCHITECTURE.md ("Redis data model").
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from . import notices, scripts
from .errors import JobFinished, JobNotFound, StoreError
from .keys import WORKER_GROUP, Keys
from .models import JobEnd, JobStatus, ReviewRequest

log = logging.getLogger(__name__)

MAX_APPEND_BATCH = 1000
_READ_FIELDS = ("status", "error", "usage", "tenant", "attempts", "sha256")
# What redis-py raises when Redis fails; the cluster client's own (no node serves a slot, none
# can be reached) are no RedisError.
REDIS_FAILURES = (RedisError, RedisClusterException)


@contextlib.contextmanager
def redis_errors(operation: str) -> Iterator[None]:
    """Wrap Redis failures at the boundary, naming the operation that failed; and keep a
    cancellation that lands in the operation a cancellation.

    redis-py can turn one into a connection error, and on Python 3.11 swallow it outright: it
    sends every command through ``asyncio.wait_for``, which returns the send's result when a
    cancellation arrives as the send ends (gh-86296). Either way the task was asked to stop
    during the operation (its ``cancelling()`` count rose): it stops here, so that owned tasks
    (a worker's lease guard, a reaper) end when asked to instead of running on unowned.
    """
    task = asyncio.current_task()
    asked = task.cancelling() if task is not None else 0
    try:
        yield
    except REDIS_FAILURES as e:
        if task is not None and task.cancelling() > asked:
            raise asyncio.CancelledError from e
        # The message reaches clients: no hosts, ports, keys or commands (the cause is logged).
        raise StoreError(f"Redis failed during {operation}") from e
    if task is not None and task.cancelling() > asked:
        raise asyncio.CancelledError(f"cancelled during {operation}")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A consistent read of tokens ``[offset, offset + len(tokens))`` and the job's state."""

    job_id: str
    status: JobStatus
    offset: int
    tokens: list[str]
    ts: list[float]
    count: int
    error: str | None
    usage: dict[str, Any] | None
    tenant: str = ""  # the API key NAME that created the job; "" in open mode
    attempts: int = 0
    sha256: str | None = None

    @property
    def next_offset(self) -> int:
        return self.offset + len(self.tokens)

    @property
    def done(self) -> bool:
        """Ended, and nothing past ``next_offset`` is left to read."""
        return self.status.terminal and self.next_offset >= self.count

    def end(self) -> JobEnd:
        return JobEnd(
            status=self.status,
            next_offset=self.count,
            error=self.error,
            usage=self.usage,
            sha256=self.sha256,
        )


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """An entry of shard ``shard``'s queue: job ``job_id`` entered it at attempt ``attempt`` (0
    when created; N when attempt N was lost, for ``cause``)."""

    entry_id: str
    job_id: str
    shard: int = 0
    attempt: int = 0
    cause: str = ""


@dataclass(frozen=True, slots=True)
class Lease:
    """The lease of attempt ``attempt`` of job ``job_id``, in shard ``shard``'s lease index."""

    job_id: str
    attempt: int
    shard: int = 0

    @property
    def member(self) -> str:
        return f"{self.job_id}#{self.attempt}"

    @classmethod
    def of(cls, member: str, shard: int) -> Lease:
        job_id, _, attempt = member.rpartition("#")
        return cls(job_id, int(attempt), shard)


@dataclass(frozen=True, slots=True)
class Claim:
    """One attempt at a job: ``owner`` fences its writes; ``offset`` tokens were stored before."""

    job_id: str
    attempt: int
    owner: str
    offset: int
    shard: int = 0

    @property
    def lease(self) -> Lease:
        return Lease(self.job_id, self.attempt, self.shard)


class Renewal(enum.IntEnum):
    """What renewing a lease found."""

    LOST = 0  # the job is no longer this attempt's to run: stop
    RENEWED = 1
    ABANDONED = 2  # nobody followed or polled it for REVIEWSTREAM_ABANDON_SECONDS


class Requeue(enum.IntEnum):
    """What letting a running job go found."""

    NOTHING = 0  # not running that attempt or under that owner, its lease holds, or another won
    QUEUED = 1  # back in the queue for its next attempt
    SPENT = 2  # its attempts were spent: it ended as failed, naming every cause


def spent_error(causes: Sequence[str]) -> str:
    """The error of a job that failed because its attempts were spent."""
    attempts = f"{len(causes)} attempt" + ("s" if len(causes) > 1 else "")
    return f"gave up after {attempts}: " + "; ".join(causes)


def text_digest(tokens: Sequence[str]) -> str:
    """The hex SHA-256 of a job's text: its tokens concatenated, UTF-8."""
    digest = hashlib.sha256()
    for token in tokens:
        digest.update(token.encode())
    return digest.hexdigest()


def new_job_id() -> str:
    return uuid.uuid4().hex


def _entry(shard: int, entry_id: str, fields: dict[str, str]) -> QueueEntry:
    return QueueEntry(
        entry_id, fields["job"], shard, int(fields.get("attempt") or 0), fields.get("cause", "")
    )


class Script:
    """A Lua script run with EVALSHA, sent whole with EVAL whenever Redis does not know it (a
    restart, or a cluster node that has not run it yet): EVAL caches it for the next EVALSHA.

    Like redis-py's ``register_script`` without its per-call checks (an import and a
    ``Pipeline`` isinstance test through a typing Protocol, on every append). Not SCRIPT LOAD:
    on a Redis Cluster that goes to every master, and fails while any of them is down.
    """

    def __init__(self, redis: aioredis.Redis, source: str) -> None:
        self._redis = redis
        self._source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    @property
    def source(self) -> str:
        return self._source

    async def __call__(self, *, keys: Sequence[str], args: Sequence[str | int | float]) -> Any:
        try:
            return await self._redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._redis.eval(self._source, len(keys), *keys, *args)


class JobStore:
    """Jobs, their tokens and the worker queue on Redis (``redis.asyncio``).

    ``sharded_pubsub``: announce on the jobs' channels with SPUBLISH (Redis >= 7; for Redis
    Cluster, whose hub then listens with SSUBSCRIBE) rather than PUBLISH.
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
        self.retention_seconds = retention_seconds
        self.sharded_pubsub = sharded_pubsub
        # redis-py's cluster client (cast to Redis by runtime.job_store) refuses pipelined
        # EVALSHA: scripts go whole in its pipelines.
        self._evalsha_pipelines = isinstance(redis, aioredis.Redis)

        def script(source: str) -> Script:
            return Script(redis, notices.publishing(source, sharded=sharded_pubsub))

        self._append = script(scripts.APPEND)
        self._finish = script(scripts.FINISH)
        self._claim = script(scripts.CLAIM)
        self._settle = script(scripts.SETTLE)
        self._lapse = script(scripts.LAPSE)
        self._renew = script(scripts.RENEW)
        self._extend = script(scripts.EXTEND)
        self._requeue = script(scripts.REQUEUE)
        self._seen = script(scripts.SEEN)
        self._expired = script(scripts.EXPIRED_LEASES)
        self._heartbeat = script(scripts.HEARTBEAT)
        self._workers_alive = script(scripts.WORKERS_ALIVE)

    # -- jobs ---------------------------------------------------------------------------------

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
        await self.write_job(
            job_id,
            request,
            provider=provider,
            model=model,
            tenant=tenant,
            shard=shard,
            ttl_seconds=unclaimed_ttl_seconds,
        )
        try:
            await self.enqueue(job_id, shard)
        except StoreError:
            with contextlib.suppress(StoreError, JobNotFound):
                await self.finish(
                    job_id,
                    JobStatus.FAILED,
                    error="the job could not be queued: Redis failed",
                    only_if_status=JobStatus.QUEUED,
                    attempt=0,
                )
            raise
        return job_id

    async def write_job(
        self,
        job_id: str,
        request: ReviewRequest,
        *,
        provider: str,
        model: str,
        tenant: str,
        shard: int,
        ttl_seconds: float | None,
    ) -> None:
        """The job side of ``create``: the queued job's meta, expiring after ``ttl_seconds``."""
        meta = self.keys.meta(job_id)
        with redis_errors("create job"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(
                    meta,
                    mapping={
                        "status": JobStatus.QUEUED.value,
                        "created_at": f"{time.time():.6f}",
                        "provider": provider,
                        "model": model,
                        "request": request.model_dump_json(),
                        "count": 0,
                        "attempts": 0,
                        "tenant": tenant,
                        "shard": shard,
                    },
                )
                if ttl_seconds is not None:
                    pipe.pexpire(meta, max(int(ttl_seconds * 1000), 1))
                await pipe.execute()

    async def enqueue(self, job_id: str, shard: int) -> None:
        """The shard side of ``create``: the job's first queue entry."""
        with redis_errors("queue job"):
            await self.redis.xadd(self.keys.queue(shard), {"job": job_id, "attempt": 0})

    async def meta(self, job_id: str) -> dict[str, str]:
        with redis_errors("read job"):
            meta = await self.redis.hgetall(self.keys.meta(job_id))
        if not meta:
            raise JobNotFound(job_id)
        return {str(k): str(v) for k, v in meta.items()}

    async def read(self, job_id: str, offset: int, limit: int) -> Snapshot:
        """Tokens from ``offset`` (at most ``limit``) and the job's state, read atomically."""
        chunks, times = self.keys.chunks(job_id), self.keys.times(job_id)
        stop = offset + max(limit, 1) - 1
        with redis_errors("read tokens"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hmget(self.keys.meta(job_id), *_READ_FIELDS)
                pipe.llen(chunks)
                pipe.lrange(chunks, offset, stop)
                pipe.lrange(times, offset, stop)
                meta, count, tokens, ts = await pipe.execute()
        status, error, usage, tenant, attempts, sha256 = meta
        if status is None:
            raise JobNotFound(job_id)
        if limit <= 0:
            tokens, ts = [], []
        return Snapshot(
            job_id=job_id,
            status=JobStatus(status),
            offset=offset,
            tokens=tokens,
            ts=[float(t) for t in ts],
            count=count,
            error=error or None,
            usage=json.loads(usage) if usage else None,
            tenant=tenant or "",
            attempts=int(attempts or 0),
            sha256=sha256 or None,
        )

    async def text(self, job_id: str) -> list[str]:
        """Every stored token of the job."""
        with redis_errors("read tokens"):
            tokens: Any = await self.redis.lrange(self.keys.chunks(job_id), 0, -1)
        return list(tokens)

    async def append(
        self, job_id: str, owner: str, tokens: Sequence[str], *, offset: int | None = None
    ) -> bool:
        """Append tokens, bump the count and announce them, atomically.

        ``offset``: where the tokens go. With it, an append retried after its reply was lost
        (a connection cut) stores nothing twice, and one that finds other tokens there raises
        ``StoreError``. Returns False when the job is no longer this owner's to write (it was
        cancelled, requeued or ended): the producer should stop.
        """
        keys = [self.keys.meta(job_id), self.keys.chunks(job_id), self.keys.times(job_id)]
        channel = self.keys.channel(job_id)
        with redis_errors("append tokens"):
            for i in range(0, len(tokens), MAX_APPEND_BATCH):
                batch = list(tokens[i : i + MAX_APPEND_BATCH])
                at = "" if offset is None else offset + i
                result = await self._append(keys=keys, args=[channel, owner, at, *batch])
                if result == -3:
                    raise StoreError(f"job {job_id!r} does not hold {at} tokens: append refused")
                if result < 0:
                    return False
        return True

    async def finish(
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
        """End the job (after its last token) and announce the end, atomically, once.

        The end carries the SHA-256 of the job's text, read here: should a token be appended
        between that read and the end, the end is refused and the text read again. Every key
        of the job then expires after the retention. ``owner``, ``only_if_status`` and
        ``attempt`` fence the end: only that attempt's owner, only in those statuses, only at
        that attempt. Then the attempt's lease is dropped from its shard (the second step: one
        left behind lapses and is dropped by a reaper). Returns True when this call ended the
        job; False when it had already ended (or the fence refused).
        """
        ended, lease = await self.end_job(
            job_id,
            status,
            error=error,
            usage=usage,
            owner=owner,
            only_if_status=only_if_status,
            attempt=attempt,
        )
        if lease is not None:
            try:
                await self.drop_lease(lease)
            except StoreError as e:
                log.warning("job %s: its lease stays until it lapses: %s", job_id, e)
        return ended

    async def end_job(
        self,
        job_id: str,
        status: JobStatus,
        *,
        error: str | None = None,
        usage: dict[str, Any] | None = None,
        owner: str = "",
        only_if_status: JobStatus | Collection[JobStatus] | None = None,
        attempt: int | None = None,
    ) -> tuple[bool, Lease | None]:
        """The job side of ``finish``: whether this call ended the job, and the lease of the
        attempt it stopped (None when the job was not running)."""
        if not status.terminal:
            raise ValueError(f"{status} is not a terminal status")
        if isinstance(only_if_status, JobStatus):
            only_if_status = (only_if_status,)
        keys = [self.keys.meta(job_id), self.keys.chunks(job_id), self.keys.times(job_id)]
        args: list[str | int] = [
            self.keys.channel(job_id),
            status.value,
            error or "",
            json.dumps(usage) if usage is not None else "",
            owner,
            self.retention_seconds,
            " ".join(s.value for s in only_if_status or ()),
            "" if attempt is None else attempt,
        ]
        while True:
            tokens = await self.text(job_id)
            with redis_errors("finish job"):
                reply = await self._finish(
                    keys=keys, args=[*args, len(tokens), text_digest(tokens)]
                )
            code = int(reply[0])
            if code == -3:
                raise JobNotFound(job_id)
            if code == 1:
                _, ran, shard, was_running = (int(x) for x in reply)
                return True, Lease(job_id, ran, shard) if was_running else None
            if code != -4:
                return False, None

    async def tenant_of(self, job_id: str) -> str:
        """The tenant that created the job; ``JobNotFound`` if there is none."""
        with redis_errors("read job"):
            status, tenant = await self.redis.hmget(self.keys.meta(job_id), "status", "tenant")
        if status is None:
            raise JobNotFound(job_id)
        return str(tenant or "")

    async def cancel(self, job_id: str) -> None:
        """End the job as cancelled; its producer notices and closes the upstream stream."""
        if not await self.finish(job_id, JobStatus.CANCELLED, error="cancelled by request"):
            meta = await self.meta(job_id)
            raise JobFinished(job_id, meta["status"])

    async def progress(self, job_ids: Sequence[str]) -> list[tuple[JobStatus | None, int]]:
        """Each job's status (None: unknown or expired) and token count, in one round trip.

        The hub's check of quiet jobs: two commands a job, however many follow it. Not atomic,
        but the status is read before the count, so with an ended status the count is final.
        """
        with redis_errors("read job progress"):
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hget(self.keys.meta(job_id), "status")
                    pipe.llen(self.keys.chunks(job_id))
                replies = await pipe.execute()
        return [
            (JobStatus(status) if status is not None else None, int(count))
            for status, count in zip(replies[::2], replies[1::2], strict=True)
        ]

    # -- queue and leases ---------------------------------------------------------------------

    async def ensure_group(self) -> None:
        """The consumer group of every shard's queue (made with the stream when missing)."""
        for shard in self.keys.shards:
            with redis_errors("create worker group"):
                try:
                    await self.redis.xgroup_create(
                        self.keys.queue(shard), WORKER_GROUP, id="0", mkstream=True
                    )
                except ResponseError as e:
                    if "BUSYGROUP" not in str(e):
                        raise

    async def next_entries(
        self, consumer: str, count: int, block_ms: int, *, shard: int | None = None
    ) -> list[QueueEntry]:
        """New entries of ``shard``'s queue for this consumer, waiting up to ``block_ms``.

        Without a shard (tools and tests), every shard's: one blocking read when there is one
        shard; else rounds of reads that do not block, 10 ms apart, until ``block_ms`` passed.
        A worker runs one blocking read per shard instead (a read over several streams would
        span slots).
        """
        if shard is not None or self.keys.queue_shards == 1:
            return await self._read_shard(consumer, count, block_ms, shard or 0)
        deadline = time.monotonic() + block_ms / 1000
        while True:
            for each in self.keys.shards:
                entries = await self._read_shard(consumer, count, None, each)
                if entries:
                    return entries
            if time.monotonic() >= deadline:
                return []
            await asyncio.sleep(0.01)

    async def _read_shard(
        self, consumer: str, count: int, block_ms: int | None, shard: int
    ) -> list[QueueEntry]:
        queue = self.keys.queue(shard)
        with redis_errors("read queue"):
            try:
                reply: Any = await self.redis.xreadgroup(
                    WORKER_GROUP, consumer, {queue: ">"}, count=count, block=block_ms
                )
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                await self.ensure_group()
                return []
        if not reply:
            return []
        # RESP2 answers [[stream, entries]]; RESP3 a map {stream: [entries]}.
        entries = reply[queue][0] if isinstance(reply, dict) else reply[0][1]
        return [_entry(shard, entry_id, fields) for entry_id, fields in entries if fields]

    async def reclaim_entries(
        self, consumer: str, min_idle_ms: int, count: int, *, shard: int | None = None
    ) -> list[QueueEntry]:
        """Entries delivered to a consumer that never claimed them (it died): take them over,
        up to ``count`` (from ``shard``, or from every shard in turn)."""
        found: list[QueueEntry] = []
        for each in self.keys.shards if shard is None else (shard,):
            if len(found) >= count:
                break
            with redis_errors("reclaim queue entries"):
                try:
                    claimed: Any = await self.redis.xautoclaim(
                        self.keys.queue(each),
                        WORKER_GROUP,
                        consumer,
                        min_idle_ms,
                        "0-0",
                        count=count - len(found),
                    )
                except ResponseError as e:
                    if "NOGROUP" not in str(e):
                        raise
                    continue
            found += [_entry(each, entry_id, fields) for entry_id, fields in claimed[1] if fields]
        return found

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

        Two steps: the job side starts the attempt (``start_attempt``), then the shard side
        acknowledges the entry and gives the attempt its lease (``settle``). A process dying
        between them leaves the entry pending: its next claim (``reclaim_entries``) finds the
        attempt started and gives it its lease, which then lapses like any dead worker's.

        None when there is nothing to run: the job was cancelled, ended, claimed from this
        entry already, or moved on (the entry is dropped either way). An entry naming a lost
        attempt whose requeue was left half done completes that requeue first (or ends the job
        as failed when ``max_attempts`` were spent). ``reset``: the attempt starts the review
        over rather than continuing it (announced to followers).
        """
        reply = await self.start_attempt(entry, worker, reset=reset, max_attempts=max_attempts)
        code = int(reply[0])
        claim: Claim | None = None
        lease: Lease | None = None
        if code == 1:
            attempt, offset = int(reply[1]), int(reply[2])
            claim = Claim(entry.job_id, attempt, f"{worker}#{attempt}", offset, entry.shard)
            lease = claim.lease
        elif code == 3:  # delivered twice: the attempt it started may still lack its lease
            lease = Lease(entry.job_id, int(reply[1]), entry.shard)
        elif code == 2:
            await self.finish(
                entry.job_id,
                JobStatus.FAILED,
                error=spent_error(json.loads(reply[1])),
                only_if_status=JobStatus.RUNNING,
                attempt=entry.attempt,
            )
        await self.settle(entry, lease, lease_ms)
        return claim

    async def start_attempt(
        self, entry: QueueEntry, worker: str, *, reset: bool = False, max_attempts: int = 3
    ) -> list[Any]:
        """The job side of ``claim`` (the CLAIM script's answer)."""
        keys = [self.keys.meta(entry.job_id), self.keys.chunks(entry.job_id)]
        args: list[str | int] = [
            self.keys.channel(entry.job_id),
            worker,
            entry.attempt,
            entry.cause or "its producer was lost",
            "1" if reset else "",
            max_attempts,
        ]
        with redis_errors("claim job"):
            return list(await self._claim(keys=keys, args=args))

    async def settle(self, entry: QueueEntry, lease: Lease | None, lease_ms: int) -> None:
        """The shard side of ``claim``: drop the entry and, unless it has one, give ``lease``'s
        attempt its lease, at once."""
        keys = [self.keys.queue(entry.shard), self.keys.leases(entry.shard)]
        member = lease.member if lease is not None else ""
        with redis_errors("claim job"):
            await self._settle(keys=keys, args=[WORKER_GROUP, entry.entry_id, member, lease_ms])

    async def renew(self, claim: Claim, lease_ms: int, abandon_ms: int = 0) -> Renewal:
        """Extend the attempt's lease, unless the job is no longer its to run or was abandoned.

        The job side checks the attempt still runs the job, then the shard side extends the
        lease: ``LOST`` when a reaper took it meanwhile.
        """
        with redis_errors("renew lease"):
            found = Renewal(
                await self._renew(
                    keys=[self.keys.meta(claim.job_id)], args=[claim.owner, abandon_ms]
                )
            )
            if found is not Renewal.RENEWED:
                return found
            lease = claim.lease
            extended = await self._extend(
                keys=[self.keys.leases(lease.shard)], args=[lease.member, lease_ms]
            )
        return Renewal.RENEWED if extended else Renewal.LOST

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
        for the next attempt (``take_lease``: exactly one process wins), then the job records
        the cause and is queued (``requeue_attempt``). A process dying between them leaves the
        entry, whose claim completes the requeue.

        Returns ``QUEUED``; or ``SPENT`` with every attempt's cause when it had
        ``max_attempts`` already (it is ended as failed here, naming them); or ``NOTHING``
        (when the job does not run that attempt, a lease left behind for it is dropped).
        """
        with redis_errors("requeue job"):
            status, attempts, running_owner, shard = await self.redis.hmget(
                self.keys.meta(job_id), "status", "attempts", "owner", "shard"
            )
        if status is None:
            raise JobNotFound(job_id)
        lease = Lease(job_id, int(attempts or 0) if attempt is None else attempt, int(shard or 0))
        if status != JobStatus.RUNNING.value or int(attempts or 0) != lease.attempt:
            if attempt is not None:
                await self.drop_lease(lease)  # an attempt that ended or was requeued
            return Requeue.NOTHING, []
        if owner and running_owner != owner:
            return Requeue.NOTHING, []
        entry = await self.take_lease(lease, cause, only_if_lapsed=only_if_lease_lapsed)
        if entry is None:
            return Requeue.NOTHING, []
        outcome, causes = await self.requeue_attempt(
            lease, cause, max_attempts=max_attempts, owner=owner
        )
        if outcome is Requeue.SPENT:
            await self.finish(
                job_id,
                JobStatus.FAILED,
                error=spent_error(causes),
                only_if_status=JobStatus.RUNNING,
                attempt=lease.attempt,
            )
            await self.drop_entry(entry)
        return outcome, causes

    async def take_lease(
        self, lease: Lease, cause: str, *, only_if_lapsed: bool = False
    ) -> QueueEntry | None:
        """The shard side of ``requeue``: remove the attempt's lease (only if it lapsed, when
        asked) and add the entry for the next attempt. None when the lease is gone (another
        process won) or still holds."""
        keys = [self.keys.leases(lease.shard), self.keys.queue(lease.shard)]
        args: list[str | int] = [
            lease.member,
            lease.job_id,
            lease.attempt,
            cause,
            "1" if only_if_lapsed else "",
        ]
        with redis_errors("requeue job"):
            entry_id = await self._lapse(keys=keys, args=args)
        if entry_id is None:
            return None
        return QueueEntry(str(entry_id), lease.job_id, lease.shard, lease.attempt, cause)

    async def requeue_attempt(
        self, lease: Lease, cause: str, *, max_attempts: int, owner: str = ""
    ) -> tuple[Requeue, list[str]]:
        """The job side of ``requeue``: record the cause and queue the job, fenced by the
        attempt; ``SPENT`` (with the causes) leaves the job running for the caller to end."""
        keys = [self.keys.meta(lease.job_id), self.keys.chunks(lease.job_id)]
        args: list[str | int] = [
            self.keys.channel(lease.job_id),
            cause,
            max_attempts,
            lease.attempt,
            owner,
        ]
        with redis_errors("requeue job"):
            outcome, causes = await self._requeue(keys=keys, args=args)
        if outcome == -3:
            raise JobNotFound(lease.job_id)
        return Requeue(outcome), json.loads(causes) if causes else []

    async def lapsed_leases(self, limit: int = 100, *, shard: int | None = None) -> list[Lease]:
        """Leases whose deadline has passed (Redis clock), up to ``limit`` from ``shard`` or
        from each shard."""
        found: list[Lease] = []
        for each in self.keys.shards if shard is None else (shard,):
            with redis_errors("find lapsed leases"):
                members = await self._expired(keys=[self.keys.leases(each)], args=[limit])
            found += [Lease.of(member, each) for member in members]
        return found

    async def drop_lease(self, lease: Lease) -> None:
        with redis_errors("drop lease"):
            await self.redis.zrem(self.keys.leases(lease.shard), lease.member)

    async def seen(self, job_ids: Sequence[str]) -> None:
        """Someone follows or polls these jobs now: they are not abandoned."""
        with redis_errors("mark jobs followed"):
            try:
                await self._mark_seen(job_ids, whole=not self._evalsha_pipelines)
            except NoScriptError:  # a restarted Redis: send it whole, which caches it
                await self._mark_seen(job_ids, whole=True)

    async def _mark_seen(self, job_ids: Sequence[str], *, whole: bool) -> None:
        """One pipeline (one per master on a cluster) of the SEEN script, by SHA or whole."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                if whole:
                    pipe.eval(self._seen.source, 1, self.keys.meta(job_id))
                else:
                    pipe.evalsha(self._seen.sha, 1, self.keys.meta(job_id))
            await pipe.execute()

    async def queue_length(self) -> int:
        """Entries waiting in the queue (not yet claimed), every shard's that answers.

        A shard on a Redis Cluster master that is down is left out of the sum (the capacity
        check must not refuse every job for one master's sake); all of them failing is an error.
        """
        with redis_errors("read queue length"):
            lengths = await asyncio.gather(
                *(self.redis.xlen(self.keys.queue(shard)) for shard in self.keys.shards),
                return_exceptions=True,
            )
            failures = [n for n in lengths if isinstance(n, BaseException)]
            if len(failures) == len(lengths) or any(
                not isinstance(f, REDIS_FAILURES) for f in failures
            ):
                raise failures[0]
        return sum(int(n) for n in lengths if not isinstance(n, BaseException))

    async def queued_before(
        self, cutoff_ms: int, count: int, *, shard: int | None = None
    ) -> list[QueueEntry]:
        """Queue entries added before ``cutoff_ms`` (an entry id starts with its Redis time),
        up to ``count`` from ``shard`` or from each shard."""
        found: list[QueueEntry] = []
        for each in self.keys.shards if shard is None else (shard,):
            with redis_errors("read old queue entries"):
                entries: Any = await self.redis.xrange(
                    self.keys.queue(each), "-", f"{cutoff_ms}-0", count=count
                )
            found += [_entry(each, entry_id, fields) for entry_id, fields in entries if fields]
        return found

    async def retire(self, entry: QueueEntry, lease_ms: int) -> None:
        """Drop an entry nobody is to claim now (a reaper's, past the queued timeout).

        Should a claim of it have been cut between its two steps (the job runs the attempt
        after the one the entry names, maybe without a lease), that attempt gets its lease
        first, as the claim would have given it: it lapses if nobody runs the attempt.
        """
        with redis_errors("read job"):
            status, attempts = await self.redis.hmget(
                self.keys.meta(entry.job_id), "status", "attempts"
            )
        lease = None
        if status == JobStatus.RUNNING.value and int(attempts or 0) == entry.attempt + 1:
            lease = Lease(entry.job_id, entry.attempt + 1, entry.shard)
        await self.settle(entry, lease, lease_ms)

    async def drop_entry(self, entry: QueueEntry) -> None:
        queue = self.keys.queue(entry.shard)
        with redis_errors("drop queue entry"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(queue, WORKER_GROUP, entry.entry_id)
                pipe.xdel(queue, entry.entry_id)
                await pipe.execute()

    # -- workers and secrets ------------------------------------------------------------------

    async def heartbeat(self, worker: str, forget_after_ms: int) -> None:
        """Announce ``worker`` alive now (Redis clock); forget workers silent for longer."""
        with redis_errors("worker heartbeat"):
            await self._heartbeat(keys=[self.keys.workers], args=[worker, forget_after_ms])

    async def forget_worker(self, worker: str) -> None:
        with redis_errors("worker sign-off"):
            await self.redis.zrem(self.keys.workers, worker)

    async def workers_alive(self, window_ms: int) -> int:
        """How many workers announced themselves within ``window_ms``."""
        with redis_errors("count live workers"):
            return int(await self._workers_alive(keys=[self.keys.workers], args=[window_ms]))

    async def shared_secret(self) -> bytes:
        """A random secret shared by every process on this Redis, made by the first to ask."""
        with redis_errors("read the token secret"):
            await self.redis.set(self.keys.token_secret, secrets.token_hex(32), nx=True)
            value = await self.redis.get(self.keys.token_secret)
        return str(value).encode()
