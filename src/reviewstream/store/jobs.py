"""JobStore: a job's own keys on Redis — its meta, its tokens and their times, its channel.

Per job J (all keys hash-tagged ``{J}``, so one script can change them together): a LIST of
tokens (offset N = the number of tokens a client already has), a parallel LIST of their append
times, a HASH of metadata, and a pub/sub channel on which every append, every new or lost
attempt and the end are announced with their offsets. Each method is one step on the job's
slot; the steps a transition takes on the job's queue shard are ``Store``'s
(``store.lifecycle``).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Collection, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from ..errors import JobNotFound, StoreError
from ..keys import Keys
from ..models import JobStatus, ReviewRequest
from . import notices
from .boundary import Call, Lane, Script, redis_errors, run_many
from .scripts import jobs as scripts
from .scripts.jobs import AppendRefusal, AttemptStart, Ending, Renewal, Requeue
from .types import Append, Attempts, Lease, QueueEntry, Snapshot

MAX_APPEND_BATCH = 1000
_READ_FIELDS = ("status", "error", "usage", "tenant", "attempts", "sha256")


def text_digest(tokens: Sequence[str]) -> str:
    """The hex SHA-256 of a job's text: its tokens concatenated, UTF-8."""
    digest = hashlib.sha256()
    for token in tokens:
        digest.update(token.encode())
    return digest.hexdigest()


def new_job_id() -> str:
    return uuid.uuid4().hex


def appended(job_id: str, reply: Any, offset: int | None = None) -> bool:
    """What an APPEND reply means to its producer: True when the tokens are stored, False when
    the job is no longer the attempt's to write (it should stop). ``StoreError`` when it
    failed: the round trip (its exception), or the offset (the job holds other tokens)."""
    if isinstance(reply, StoreError):
        raise reply
    if isinstance(reply, Exception):
        raise StoreError("Redis failed during append tokens") from reply
    if reply >= 0:
        return True
    if AppendRefusal(reply) is AppendRefusal.WRONG_OFFSET:
        raise StoreError(f"job {job_id!r} does not hold {offset} tokens: append refused")
    return False


class JobStore:
    """Jobs and their tokens on Redis (``redis.asyncio``), one job's slot at a time.

    ``retention_seconds``: how long an ended job's keys stay. ``sharded_pubsub``: announce on
    the jobs' channels with SPUBLISH (Redis >= 7; for Redis Cluster, whose hub then listens
    with SSUBSCRIBE) rather than PUBLISH.
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
        announce = notices.announcing(sharded=sharded_pubsub)
        self._append = Script(redis, announce + scripts.APPEND)
        self._end = Script(redis, announce + scripts.END)
        self._claim = Script(redis, announce + scripts.CLAIM)
        self._requeue = Script(redis, announce + scripts.REQUEUE)
        self._renew = Script(redis, scripts.RENEW)
        self._seen = Script(redis, scripts.SEEN)

    async def write(
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
        """A new queued job's meta, expiring after ``ttl_seconds`` (the job side of
        ``Store.create``; a claim keeps it for good)."""
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

    async def meta(self, job_id: str) -> dict[str, str]:
        with redis_errors("read job"):
            meta = await self.redis.hgetall(self.keys.meta(job_id))
        if not meta:
            raise JobNotFound(job_id)
        return {str(k): str(v) for k, v in meta.items()}

    async def attempts(self, job_id: str) -> Attempts:
        """Where the job's attempts stand; ``JobNotFound`` if there is no such job."""
        with redis_errors("read job"):
            status, attempt, owner, shard = await self.redis.hmget(
                self.keys.meta(job_id), "status", "attempts", "owner", "shard"
            )
        if status is None:
            raise JobNotFound(job_id)
        return Attempts(
            JobStatus(str(status)), int(attempt or 0), str(owner or ""), int(shard or 0)
        )

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

    async def tenant_of(self, job_id: str) -> str:
        """The tenant that created the job; ``JobNotFound`` if there is none."""
        with redis_errors("read job"):
            status, tenant = await self.redis.hmget(self.keys.meta(job_id), "status", "tenant")
        if status is None:
            raise JobNotFound(job_id)
        return str(tenant or "")

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

    async def append(
        self,
        job_id: str,
        owner: str,
        tokens: Sequence[str],
        *,
        offset: int | None = None,
        stamps: Sequence[str] | None = None,
    ) -> bool:
        """Append tokens, bump the count and announce them, atomically.

        ``offset``: where the tokens go. With it, an append retried after its reply was lost
        (a connection cut) stores nothing twice, and one that finds other tokens there raises
        ``StoreError``. ``stamps``: each token's time (seconds on the Redis clock, as text);
        without them, the time of the append. Returns False when the job is no longer this
        owner's to write (it was cancelled, requeued or ended): the producer should stop.
        """
        with redis_errors("append tokens"):
            for i in range(0, len(tokens), MAX_APPEND_BATCH):
                at = None if offset is None else offset + i
                batch = Append(
                    job_id,
                    owner,
                    at,
                    tokens[i : i + MAX_APPEND_BATCH],
                    stamps[i : i + MAX_APPEND_BATCH] if stamps is not None else (),
                )
                keys, args = self._append_call(batch)
                if not appended(job_id, await self._append(keys=keys, args=args), at):
                    return False
        return True

    async def append_batch(
        self, appends: Sequence[Append], *, lane: Lane | None = None
    ) -> list[Any]:
        """Many appends (each at most ``MAX_APPEND_BATCH`` tokens, each job at most once) in
        one round trip: one pipeline (on ``lane``'s connection, if given), one per master on a
        Redis Cluster (``run_many``).

        Each append's reply in its place: the job's new count, an ``AppendRefusal`` code, or
        the exception its call met (a ``StoreError`` when its round trip failed: whether it
        was stored is unknown, and an append retried at the same offset stores nothing twice).
        ``appended`` reads a reply.
        """
        calls = [self._append_call(append) for append in appends]
        return await run_many(self.redis, self._append, calls, operation="append tokens", lane=lane)

    def _append_call(self, append: Append) -> Call:
        job_id = append.job_id
        keys = [self.keys.meta(job_id), self.keys.chunks(job_id), self.keys.times(job_id)]
        at = "" if append.offset is None else append.offset
        args = [self.keys.channel(job_id), append.owner, at, len(append.tokens)]
        return keys, [*args, *append.tokens, *append.stamps]

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
    ) -> tuple[bool, Lease | None]:
        """End the job (after its last token) and announce the end, atomically, once: the job
        side of ``Store.end``, which documents the fences.

        Returns whether this call ended the job, and the lease of the attempt it stopped (None
        when the job was not running). The end carries the SHA-256 of the job's text, read
        here: should a token be appended between that read and the end, the end is refused and
        the text read again.
        """
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
                reply = await self._end(
                    keys=keys,
                    args=[*args, len(tokens), text_digest(tokens), self.keys.ends(job_id)],
                )
            ending = Ending(int(reply[0]))
            if ending is Ending.UNKNOWN_JOB:
                raise JobNotFound(job_id)
            if ending is Ending.ENDED:
                ran, shard, was_running = (int(x) for x in reply[1:])
                return True, Lease(job_id, ran, shard) if was_running else None
            if ending is not Ending.TOKENS_CHANGED:
                return False, None

    async def start_attempt(
        self, entry: QueueEntry, worker: str, *, reset: bool = False, max_attempts: int = 3
    ) -> tuple[AttemptStart, list[Any]]:
        """The job side of ``Store.claim``: the CLAIM script's code and the rest of its
        reply."""
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
            code, *rest = await self._claim(keys=keys, args=args)
        return AttemptStart(int(code)), rest

    async def requeue_attempt(
        self, lease: Lease, cause: str, *, max_attempts: int, owner: str = ""
    ) -> tuple[Requeue, list[str]]:
        """The job side of ``Store.requeue``: record the cause and queue the job, fenced by the
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
            code, causes = await self._requeue(keys=keys, args=args)
        outcome = Requeue(int(code))
        if outcome is Requeue.UNKNOWN_JOB:
            raise JobNotFound(lease.job_id)
        return outcome, json.loads(causes) if causes else []

    async def renewal(self, job_id: str, owner: str, abandon_ms: int = 0) -> Renewal:
        """The job side of ``Store.renew``: whether attempt ``owner`` still runs the job, and
        whether nobody followed or polled it for ``abandon_ms`` (0: never abandoned)."""
        with redis_errors("renew lease"):
            return Renewal(
                await self._renew(keys=[self.keys.meta(job_id)], args=[owner, abandon_ms])
            )

    async def renewals(
        self,
        attempts: Sequence[tuple[str, str]],
        abandon_ms: int = 0,
        master_seconds: float | None = None,
    ) -> list[Renewal | StoreError]:
        """``renewal`` for many (job id, owner) at once, in one round trip (one per master on
        a Redis Cluster): each one's ``Renewal``, or the ``StoreError`` its round trip met
        (``master_seconds``: a master's longest, as ``run_many``'s)."""
        calls: list[Call] = [
            ([self.keys.meta(job_id)], [owner, abandon_ms]) for job_id, owner in attempts
        ]
        found: list[Renewal | StoreError] = []
        replies = await run_many(
            self.redis,
            self._renew,
            calls,
            operation="renew leases",
            master_seconds=master_seconds,
        )
        for reply in replies:
            if isinstance(reply, StoreError):
                found.append(reply)
            elif isinstance(reply, Exception):
                found.append(StoreError("Redis failed during renew leases"))
            else:
                found.append(Renewal(int(reply)))
        return found

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
