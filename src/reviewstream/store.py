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

    @property
    def next_offset(self) -> int:
        return self.offset + len(self.tokens)

    @property
    def done(self) -> bool:
        """Ended, and nothing past ``next_offset`` is left to read."""
        return self.status.terminal and self.next_offset >= self.count

    def end(self) -> JobEnd:
        return JobEnd(
            status=self.status, next_offset=self.count, error=self.error, usage=self.usage
        )


@dataclass(frozen=True, slots=True)
class QueueEntry:
    entry_id: str
    job_id: str


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
        self._sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, *, keys: Sequence[str], args: Sequence[str | int | float]) -> Any:
        try:
            return await self._redis.evalsha(self._sha, len(keys), *keys, *args)
        except NoScriptError:
            self._sha = await self._redis.script_load(self._source)
            return await self._redis.evalsha(self._sha, len(keys), *keys, *args)


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
                        "claims": 0,
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
                pipe.hmget(self.keys.meta(job_id), "status", "error", "usage", "tenant")
                pipe.llen(chunks)
                pipe.lrange(chunks, offset, stop)
                pipe.lrange(times, offset, stop)
                (status, error, usage, tenant), count, tokens, ts = await pipe.execute()
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
        )

    async def append(self, job_id: str, owner: str, tokens: Sequence[str]) -> bool:
        """Append tokens, bump the count and announce them, atomically.

        Returns False when the job is no longer this owner's to write (it was cancelled, or its
        lease lapsed and it was ended): the producer should stop.
        """
        keys = [self.keys.meta(job_id), self.keys.chunks(job_id), self.keys.times(job_id)]
        channel = self.keys.channel(job_id)
        with redis_errors("append tokens"):
            for i in range(0, len(tokens), MAX_APPEND_BATCH):
                batch = list(tokens[i : i + MAX_APPEND_BATCH])
                if await self._append(keys=keys, args=[channel, owner, *batch]) < 0:
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

        Every key of the job then expires after the retention. Returns True when this call
        ended the job; False when it had already ended (or belongs to another owner).
        """
        if not status.terminal:
            raise ValueError(f"{status} is not a terminal status")
        keys = [
            self.keys.meta(job_id),
            self.keys.chunks(job_id),
            self.keys.times(job_id),
            self.keys.leases,
        ]
        args = [
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
        with redis_errors("finish job"):
            result = await self._finish(keys=keys, args=args)
        if result == -3:
            raise JobNotFound(job_id)
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

    async def claim(self, entry: QueueEntry, owner: str, lease_ms: int) -> bool:
        """Take a queued job: it becomes running under ``owner`` with a lease. Acks the entry."""
        keys = [self.keys.meta(entry.job_id), self.keys.queue, self.keys.leases]
        args: list[str | int] = [entry.job_id, entry.entry_id, WORKER_GROUP, owner, lease_ms]
        with redis_errors("claim job"):
            return bool(await self._claim(keys=keys, args=args) == 1)

    async def renew(self, job_id: str, owner: str, lease_ms: int) -> bool:
        """Extend the lease; False when the job is no longer this owner's to run."""
        keys = [self.keys.meta(job_id), self.keys.leases]
        with redis_errors("renew lease"):
            return bool(await self._renew(keys=keys, args=[job_id, owner, lease_ms]) == 1)

    async def reap_lapsed_leases(self, limit: int = 100) -> list[str]:
        """End every running job whose lease lapsed as failed; returns the ids ended."""
        with redis_errors("find lapsed leases"):
            lapsed: list[str] = await self._expired(keys=[self.keys.leases], args=[limit])
        ended = []
        for job_id in lapsed:
            try:
                if await self.finish(
                    job_id,
                    JobStatus.FAILED,
                    error="worker lost: its lease lapsed before the job finished",
                    only_if_lease_lapsed=True,
                ):
                    ended.append(job_id)
            except JobNotFound:
                with redis_errors("drop lease"):
                    await self.redis.zrem(self.keys.leases, job_id)
        return ended

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
