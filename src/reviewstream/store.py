"""JobStore: the jobs on Redis, the single source of truth.

Per job J (all keys hash-tagged ``{J}``): a LIST of tokens (offset N = the number of tokens a
client already has), a parallel LIST of their append times, a HASH of metadata, and a pub/sub
channel on which every append and the end are announced with their offsets. The worker queue is
a Redis stream with a consumer group, so an accepted job stays pending until a worker claims it;
running jobs hold a lease in a sorted set scored by deadline.
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from . import scripts
from .errors import JobFinished, JobNotFound, StoreError
from .keys import WORKER_GROUP, Keys
from .models import JobEnd, JobStatus, ReviewRequest

log = logging.getLogger(__name__)

MAX_APPEND_BATCH = 1000
_READ_FIELDS = ("status", "error", "usage", "tenant", "attempts", "sha256")


@contextlib.contextmanager
def redis_errors(operation: str) -> Iterator[None]:
    """Wrap Redis failures at the boundary, naming the operation that failed."""
    try:
        yield
    except RedisError as e:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # redis-py can turn a cancellation into a connection error; keep it a cancellation
            # so that owned tasks stop when asked to.
            raise asyncio.CancelledError from e
        # The message reaches clients: no hosts, ports, keys or commands (the cause is logged).
        raise StoreError(f"Redis failed during {operation}") from e


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
    entry_id: str
    job_id: str


@dataclass(frozen=True, slots=True)
class Claim:
    """One attempt at a job: ``owner`` fences its writes; ``offset`` tokens were stored before."""

    job_id: str
    attempt: int
    owner: str
    offset: int


class Renewal(enum.IntEnum):
    """What renewing a lease found."""

    LOST = 0  # the job is no longer this attempt's to run: stop
    RENEWED = 1
    ABANDONED = 2  # nobody followed or polled it for REVIEWSTREAM_ABANDON_SECONDS


class Requeue(enum.IntEnum):
    """What letting a running job go found."""

    NOTHING = 0  # not running under that owner, or its lease still holds
    QUEUED = 1  # back in the queue for its next attempt
    SPENT = 2  # its attempts are spent: end it as failed


def text_digest(tokens: Sequence[str]) -> str:
    """The hex SHA-256 of a job's text: its tokens concatenated, UTF-8."""
    digest = hashlib.sha256()
    for token in tokens:
        digest.update(token.encode())
    return digest.hexdigest()


def new_job_id() -> str:
    return uuid.uuid4().hex


class Script:
    """A Lua script run with EVALSHA, loaded again whenever Redis does not know it (a restart).

    Like redis-py's ``register_script`` without its per-call checks (an import and a
    ``Pipeline`` isinstance test through a typing Protocol, on every append).
    """

    def __init__(self, redis: aioredis.Redis, source: str) -> None:
        self._redis = redis
        self._source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, *, keys: Sequence[str], args: Sequence[str | int | float]) -> Any:
        try:
            return await self._redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._redis.script_load(self._source)
            return await self._redis.evalsha(self.sha, len(keys), *keys, *args)


class JobStore:
    """Jobs, their tokens and the worker queue on one Redis (``redis.asyncio``)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, *, retention_seconds: int) -> None:
        self.redis = redis
        self.keys = keys
        self.retention_seconds = retention_seconds
        self._append = Script(redis, scripts.APPEND)
        self._finish = Script(redis, scripts.FINISH)
        self._claim = Script(redis, scripts.CLAIM)
        self._renew = Script(redis, scripts.RENEW)
        self._requeue = Script(redis, scripts.REQUEUE)
        self._seen = Script(redis, scripts.SEEN)
        self._expired = Script(redis, scripts.EXPIRED_LEASES)
        self._heartbeat = Script(redis, scripts.HEARTBEAT)
        self._workers_alive = Script(redis, scripts.WORKERS_ALIVE)

    # -- jobs ---------------------------------------------------------------------------------

    async def create(
        self,
        request: ReviewRequest,
        *,
        provider: str,
        model: str,
        tenant: str = "",
        job_id: str | None = None,
    ) -> str:
        """Store a new queued job and enqueue it in one transaction; returns its id."""
        job_id = job_id or new_job_id()
        with redis_errors("create job"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(
                    self.keys.meta(job_id),
                    mapping={
                        "status": JobStatus.QUEUED.value,
                        "created_at": f"{time.time():.6f}",
                        "provider": provider,
                        "model": model,
                        "request": request.model_dump_json(),
                        "count": 0,
                        "attempts": 0,
                        "tenant": tenant,
                    },
                )
                pipe.xadd(self.keys.queue, {"job": job_id})
                await pipe.execute()
        return job_id

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
        only_if_lease_lapsed: bool = False,
        only_if_status: JobStatus | None = None,
    ) -> bool:
        """End the job (after its last token) and announce the end, atomically, once.

        The end carries the SHA-256 of the job's text, read here: should a token be appended
        between that read and the end, the end is refused and the text read again. Every key
        of the job then expires after the retention. Returns True when this call ended the job;
        False when it had already ended (or belongs to another owner).
        """
        if not status.terminal:
            raise ValueError(f"{status} is not a terminal status")
        keys = [
            self.keys.meta(job_id),
            self.keys.chunks(job_id),
            self.keys.times(job_id),
            self.keys.leases,
        ]
        args: list[str | int] = [
            self.keys.channel(job_id),
            job_id,
            status.value,
            error or "",
            json.dumps(usage) if usage is not None else "",
            owner,
            self.retention_seconds,
            "1" if only_if_lease_lapsed else "",
            only_if_status.value if only_if_status is not None else "",
        ]
        while True:
            tokens = await self.text(job_id)
            with redis_errors("finish job"):
                result = await self._finish(
                    keys=keys, args=[*args, len(tokens), text_digest(tokens)]
                )
            if result == -3:
                raise JobNotFound(job_id)
            if result != -4:
                return bool(result == 1)

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
        with redis_errors("create worker group"):
            try:
                await self.redis.xgroup_create(self.keys.queue, WORKER_GROUP, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    async def next_entries(self, consumer: str, count: int, block_ms: int) -> list[QueueEntry]:
        """New queue entries for this consumer, waiting up to ``block_ms`` for one."""
        with redis_errors("read queue"):
            try:
                reply: Any = await self.redis.xreadgroup(
                    WORKER_GROUP, consumer, {self.keys.queue: ">"}, count=count, block=block_ms
                )
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                await self.ensure_group()
                return []
        entries: list[tuple[str, dict[str, str]]] = reply[0][1] if reply else []
        return [QueueEntry(entry_id, fields["job"]) for entry_id, fields in entries]

    async def reclaim_entries(
        self, consumer: str, min_idle_ms: int, count: int
    ) -> list[QueueEntry]:
        """Entries delivered to a consumer that never claimed them (it died): take them over."""
        with redis_errors("reclaim queue entries"):
            try:
                claimed: Any = await self.redis.xautoclaim(
                    self.keys.queue, WORKER_GROUP, consumer, min_idle_ms, "0-0", count=count
                )
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                return []
        return [QueueEntry(entry_id, fields["job"]) for entry_id, fields in claimed[1] if fields]

    async def claim(
        self, entry: QueueEntry, worker: str, lease_ms: int, *, reset: bool = False
    ) -> Claim | None:
        """Take a queued job: its next attempt runs under ``worker`` with a lease. Acks the entry.

        None when the job was not queued (cancelled, ended, or claimed already). ``reset``: the
        attempt starts the review over rather than continuing it (announced to followers).
        """
        keys = [
            self.keys.meta(entry.job_id),
            self.keys.queue,
            self.keys.leases,
            self.keys.chunks(entry.job_id),
        ]
        args: list[str | int] = [
            entry.job_id,
            entry.entry_id,
            WORKER_GROUP,
            worker,
            lease_ms,
            self.keys.channel(entry.job_id),
            "1" if reset else "",
        ]
        with redis_errors("claim job"):
            attempt, offset = await self._claim(keys=keys, args=args)
        if not attempt:
            return None
        return Claim(entry.job_id, int(attempt), f"{worker}#{attempt}", int(offset))

    async def renew(self, claim: Claim, lease_ms: int, abandon_ms: int = 0) -> Renewal:
        """Extend the attempt's lease, unless the job is no longer its to run or was abandoned."""
        keys = [self.keys.meta(claim.job_id), self.keys.leases]
        args: list[str | int] = [claim.job_id, claim.owner, lease_ms, abandon_ms]
        with redis_errors("renew lease"):
            return Renewal(await self._renew(keys=keys, args=args))

    async def requeue(
        self,
        job_id: str,
        cause: str,
        *,
        max_attempts: int,
        owner: str = "",
        only_if_lease_lapsed: bool = False,
    ) -> tuple[Requeue, list[str]]:
        """Put a running job whose producer is lost back in the queue, naming the cause.

        Returns ``QUEUED``; or ``SPENT`` with every attempt's cause when it had
        ``max_attempts`` already (the caller ends it as failed); or ``NOTHING``.
        """
        keys = [
            self.keys.meta(job_id),
            self.keys.chunks(job_id),
            self.keys.queue,
            self.keys.leases,
        ]
        args: list[str | int] = [
            self.keys.channel(job_id),
            job_id,
            cause,
            max_attempts,
            owner,
            "1" if only_if_lease_lapsed else "",
        ]
        with redis_errors("requeue job"):
            outcome, causes = await self._requeue(keys=keys, args=args)
        if outcome == -3:
            raise JobNotFound(job_id)
        return Requeue(outcome), json.loads(causes) if causes else []

    async def lapsed_leases(self, limit: int = 100) -> list[str]:
        """Running jobs whose lease deadline has passed (Redis clock)."""
        with redis_errors("find lapsed leases"):
            return list(await self._expired(keys=[self.keys.leases], args=[limit]))

    async def drop_lease(self, job_id: str) -> None:
        with redis_errors("drop lease"):
            await self.redis.zrem(self.keys.leases, job_id)

    async def seen(self, job_ids: Sequence[str]) -> None:
        """Someone follows or polls these jobs now: they are not abandoned."""
        with redis_errors("mark jobs followed"):
            for _ in range(2):  # once more after loading the script into a restarted Redis
                try:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for job_id in job_ids:
                            pipe.evalsha(self._seen.sha, 1, self.keys.meta(job_id))
                        await pipe.execute()
                    return
                except NoScriptError:
                    await self.redis.script_load(scripts.SEEN)

    async def queue_length(self) -> int:
        """Entries waiting in the queue (not yet claimed)."""
        with redis_errors("read queue length"):
            return int(await self.redis.xlen(self.keys.queue))

    async def queued_before(self, cutoff_ms: int, count: int) -> list[QueueEntry]:
        """Queue entries added before ``cutoff_ms`` (an entry id starts with its Redis time)."""
        with redis_errors("read old queue entries"):
            entries: Any = await self.redis.xrange(
                self.keys.queue, "-", f"{cutoff_ms}-0", count=count
            )
        return [QueueEntry(entry_id, fields["job"]) for entry_id, fields in entries if fields]

    async def drop_entry(self, entry: QueueEntry) -> None:
        with redis_errors("drop queue entry"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(self.keys.queue, WORKER_GROUP, entry.entry_id)
                pipe.xdel(self.keys.queue, entry.entry_id)
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
