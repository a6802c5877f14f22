"""Admission: what the service takes on, and how long it lets it wait.

Every limit is counted in Redis, so every process enforces the same numbers, and nothing a
crashed process held keeps counting:

- **Per key** (``REVIEWSTREAM_MAX_ACTIVE_JOBS_PER_KEY``, ``_JOBS_PER_MINUTE_PER_KEY``): one
  script on the tenant's own keys admits a job or names the limit. The active set is cleaned
  lazily, when it is full: its members whose jobs ended (or expired) leave it then, so a job
  whose ending was never recorded there stops counting once it ends by any path.
- **Durable Streams per key** (``REVIEWSTREAM_MAX_OPEN_DURABLE_STREAMS_PER_KEY``,
  ``_DURABLE_STREAMS_PER_MINUTE_PER_KEY``): a stream written at ``/v1/stream/`` is a job whose
  producer is outside, so a ``PUT`` that may create one is admitted the same way, on keys of its
  own (an operator meters model-backed jobs and streams separately): open streams (not closed,
  deleted or expired; cleaned lazily as the active jobs are) and creations in the last minute.
  An idempotent re-creation of a stream already counted is not counted again; a ``PUT`` that
  creates nothing gives back what it took. Appends are not metered: they are the producer's
  tokens, each bounded by ``REVIEWSTREAM_MAX_APPEND_BYTES``, into a stream the open count holds.
- **Open streams per key** (``REVIEWSTREAM_MAX_STREAMS_PER_KEY``): each process counts its own
  in memory (no Redis round trip per stream) and, about once a second, publishes its count per
  key as an entry with a deadline and reads the others'; a dead process's entries lapse. A key
  this process holds no streams of is read when a stream is asked for, at most once a second.
- **Watched jobs** (``REVIEWSTREAM_ABANDON_SECONDS``): each process marks the jobs it serves
  as seen, so that a job nobody reads anywhere can be cancelled.
- **Overall** (``REVIEWSTREAM_MAX_QUEUED_JOBS``, live workers): a job is refused with 503 when
  the queue is full or no worker has beaten within the heartbeat window
  (``REVIEWSTREAM_WORKER_HEARTBEAT_TIMEOUT_SECONDS``), rather than accepted into a queue
  nobody reads; ``worker.Reaper`` fails queued jobs that no worker started within
  ``REVIEWSTREAM_QUEUED_TIMEOUT_SECONDS``, in every process.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import socket
import time
import uuid
from typing import Any

from .errors import Overloaded, QuotaExceeded, StoreError
from .models import JobStatus
from .settings import Settings
from .store import Script, Store, redis_errors
from .store.scripts.tenants import ADMIT, ADMIT_STREAM, Quota
from .tenancy import Principal

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0  # Retry-After when no better estimate exists
STREAM_ENTRY_SECONDS = 5.0  # how long a process's published stream count stays valid


class Admission:
    """Decides whether a new job may be queued: per-key quotas, queue room, a live worker."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._admit = Script(store.redis, ADMIT)
        self._admit_stream = Script(store.redis, ADMIT_STREAM)

    async def check_capacity(self) -> None:
        """``Overloaded`` when no worker is alive or the queue is full."""
        s = self._settings
        alive = await self._store.workers.workers_alive(
            int(s.worker_heartbeat_timeout_seconds * 1000)
        )
        if not alive:
            raise Overloaded(
                "no worker is running: the job would wait in a queue nobody reads",
                limit="workers",
                retry_after=RETRY_SECONDS,
            )
        if await self._store.queue.queue_length() >= s.max_queued_jobs:
            raise Overloaded(
                f"the queue is full ({s.max_queued_jobs} jobs wait for a worker)",
                limit="REVIEWSTREAM_MAX_QUEUED_JOBS",
                retry_after=RETRY_SECONDS,
            )

    async def admit(self, principal: Principal, job_id: str) -> None:
        """Count ``job_id`` against its tenant's quotas, or raise ``QuotaExceeded``."""
        s = self._settings
        if principal.open or not (s.max_active_jobs_per_key or s.jobs_per_minute_per_key):
            return
        for attempt in range(2):
            limit, retry_ms = await self._run_admit(principal.tenant, job_id)
            if limit is Quota.ADMITTED:
                return
            if (
                limit is Quota.ACTIVE_JOBS
                and attempt == 0
                and await self._forget_ended(self._store.keys.tenant_active(principal.tenant))
            ):
                continue  # some counted jobs had ended: try once more
            break
        if limit is Quota.ACTIVE_JOBS:
            raise QuotaExceeded(
                f"key {principal.tenant!r} has {s.max_active_jobs_per_key} jobs queued or"
                " running (REVIEWSTREAM_MAX_ACTIVE_JOBS_PER_KEY)",
                limit="REVIEWSTREAM_MAX_ACTIVE_JOBS_PER_KEY",
                retry_after=RETRY_SECONDS,
            )
        raise QuotaExceeded(
            f"key {principal.tenant!r} created {s.jobs_per_minute_per_key} jobs in the last"
            " minute (REVIEWSTREAM_JOBS_PER_MINUTE_PER_KEY)",
            limit="REVIEWSTREAM_JOBS_PER_MINUTE_PER_KEY",
            retry_after=max(retry_ms / 1000, 1.0),
        )

    async def _run_admit(self, tenant: str, job_id: str) -> tuple[Quota, int]:
        keys = self._store.keys
        s = self._settings
        with redis_errors("admit job"):
            limit, retry_ms = await self._admit(
                keys=[keys.tenant_active(tenant), keys.tenant_starts(tenant)],
                args=[job_id, s.max_active_jobs_per_key, s.jobs_per_minute_per_key],
            )
        return Quota(int(limit)), int(retry_ms)

    async def admit_stream(self, principal: Principal, stream: str) -> str | None:
        """Count a ``PUT`` that may create ``stream`` against its key's stream quotas, or raise
        ``QuotaExceeded``. What it counted (``forget_stream`` takes it back when the ``PUT``
        created nothing), or None when nothing was."""
        s = self._settings
        per_minute = s.durable_streams_per_minute_per_key
        if principal.open or not (s.max_open_durable_streams_per_key or per_minute):
            return None
        keys, tenant = self._store.keys, principal.tenant
        start = f"{stream}:{uuid.uuid4().hex[:12]}"  # each creation is one member of the window
        for attempt in range(2):
            with redis_errors("admit stream"):
                limit, retry_ms, counted = await self._admit_stream(
                    keys=[keys.tenant_open_streams(tenant), keys.tenant_stream_starts(tenant)],
                    args=[stream, s.max_open_durable_streams_per_key, per_minute, start],
                )
            if Quota(int(limit)) is Quota.ADMITTED:
                return start if int(counted) else None
            if (
                Quota(int(limit)) is Quota.ACTIVE_JOBS
                and attempt == 0
                and await self._forget_ended(keys.tenant_open_streams(tenant))
            ):
                continue  # some counted streams had closed or gone: try once more
            break
        if Quota(int(limit)) is Quota.ACTIVE_JOBS:
            raise QuotaExceeded(
                f"key {tenant!r} has {s.max_open_durable_streams_per_key} streams open"
                " (REVIEWSTREAM_MAX_OPEN_DURABLE_STREAMS_PER_KEY): close or delete one",
                limit="REVIEWSTREAM_MAX_OPEN_DURABLE_STREAMS_PER_KEY",
                retry_after=RETRY_SECONDS,
            )
        raise QuotaExceeded(
            f"key {tenant!r} created {per_minute} streams in the last minute"
            " (REVIEWSTREAM_DURABLE_STREAMS_PER_MINUTE_PER_KEY)",
            limit="REVIEWSTREAM_DURABLE_STREAMS_PER_MINUTE_PER_KEY",
            retry_after=max(int(retry_ms) / 1000, 1.0),
        )

    async def forget_stream(self, principal: Principal, stream: str, start: str) -> None:
        """Take back what ``admit_stream`` counted for a ``PUT`` that created nothing."""
        keys, tenant = self._store.keys, principal.tenant
        with redis_errors("give back a stream's count"):
            async with self._store.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(keys.tenant_open_streams(tenant), stream)
                pipe.zrem(keys.tenant_stream_starts(tenant), start)
                await pipe.execute()

    async def _forget_ended(self, active: str) -> bool:
        """Drop the members of a tenant's ``active`` set (jobs, or streams it created) that
        have ended, closed or expired; True if any were."""
        redis, keys = self._store.redis, self._store.keys
        with redis_errors("check active jobs"):
            members: list[Any] = await redis.zrange(active, 0, -1)
            async with redis.pipeline(transaction=False) as pipe:
                for job_id in members:
                    pipe.hmget(keys.meta(job_id), "status", "deleted")
                states: list[Any] = await pipe.execute()
            ended = [
                job_id
                for job_id, (status, deleted) in zip(members, states, strict=True)
                if status is None or JobStatus(status).terminal or deleted == "1"
            ]
            if ended:
                await redis.zrem(active, *ended)
        return bool(ended)


class StreamCounter:
    """Open streams per tenant across processes, without a Redis round trip per stream.

    Each process counts its own streams in memory and, every ``interval``, publishes its count
    of each tenant it holds streams of and reads the other processes' counts of those tenants.
    A tenant this process holds no streams of is not synced in the background; its reading is
    refreshed by the next stream asked for, once it is older than ``interval`` (one ``HGETALL``,
    shared by the streams asked for meanwhile). So every reading a decision uses is at most
    about one interval old, whether or not this process serves the tenant: a process never
    admits on a count it read before the others' streams opened, nor refuses on one read
    before they closed or their process died.
    """

    def __init__(self, store: Store, limit: int, *, interval: float = 1.0) -> None:
        self._store = store
        self.limit = limit
        self._interval = interval
        self._process = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._local: collections.Counter[str] = collections.Counter()
        self._others: dict[str, tuple[int, float]] = {}  # tenant -> (count, read at, monotonic)
        self._published: dict[str, int] = {}
        self._reading = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.limit:
            self._task = asyncio.create_task(self._run(), name="reviewstream-stream-counter")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=2.0)
            self._task = None

    async def take(self, principal: Principal) -> bool:
        """Count one open stream of the principal's tenant, or raise ``QuotaExceeded``.

        False when nothing is counted (no limit, or open mode); what it counted, ``give_back``
        releases.
        """
        if not self.limit or principal.open:
            return False
        tenant = principal.tenant
        others = await self._others_of(tenant)
        if self._local[tenant] + others >= self.limit:
            raise QuotaExceeded(
                f"key {tenant!r} has {self.limit} streams open (REVIEWSTREAM_MAX_STREAMS_PER_KEY)",
                limit="REVIEWSTREAM_MAX_STREAMS_PER_KEY",
                retry_after=self._interval,
            )
        self._local[tenant] += 1
        return True

    def give_back(self, principal: Principal) -> None:
        """Release a stream that ``take`` counted."""
        self._local[principal.tenant] -= 1

    async def _others_of(self, tenant: str) -> int:
        """The other processes' open streams of ``tenant``, read at most ``interval`` ago."""
        count, read_at = self._others.get(tenant, (0, -math.inf))
        if time.monotonic() - read_at < self._interval:
            return count
        async with self._reading:  # the streams asked for meanwhile share one read
            count, read_at = self._others.get(tenant, (0, -math.inf))
            if time.monotonic() - read_at < self._interval:
                return count
            try:
                with redis_errors("read stream counts"):
                    key = self._store.keys.tenant_streams(tenant)
                    entries: dict[Any, Any] = await self._store.redis.hgetall(key)
                count = self._count_others(entries, int(time.time() * 1000))
            except StoreError as e:  # counting must not take streams down with Redis
                log.warning("stream counts not read: %s", e)
            self._others[tenant] = (count, time.monotonic())
            return count

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sync()
            except StoreError as e:
                log.warning("stream counts not shared: %s", e)

    async def sync(self) -> None:
        """Publish this process's counts per tenant, and read the other processes'."""
        redis, keys = self._store.redis, self._store.keys
        tenants = {t for t, n in self._local.items() if n} | set(self._published)
        now_ms = int(time.time() * 1000)
        deadline = now_ms + int(STREAM_ENTRY_SECONDS * 1000)
        with redis_errors("share stream counts"):
            async with redis.pipeline(transaction=False) as pipe:
                for tenant in tenants:
                    key = keys.tenant_streams(tenant)
                    count = self._local[tenant]
                    if count:
                        pipe.hset(key, self._process, f"{count}:{deadline}")
                        pipe.pexpire(key, int(STREAM_ENTRY_SECONDS * 2000))
                    else:
                        pipe.hdel(key, self._process)
                    pipe.hgetall(key)
                replies = await pipe.execute()
        read_at = time.monotonic()
        it = iter(replies)
        for tenant in tenants:
            next(it)
            if self._local[tenant]:
                next(it)
                self._published[tenant] = self._local[tenant]
            else:
                self._published.pop(tenant, None)
                self._local.pop(tenant, None)
            self._others[tenant] = (self._count_others(next(it), now_ms), read_at)

    def _count_others(self, entries: dict[str, str], now_ms: int) -> int:
        return sum(
            int(count)
            for process, entry in entries.items()
            if process != self._process
            for count, _, until in [entry.partition(":")]
            if int(until) > now_ms
        )


class Watchers:
    """The jobs someone follows or polls in this process, marked seen in Redis now and then.

    For ``REVIEWSTREAM_ABANDON_SECONDS``: a worker cancels a running job nobody has marked for
    that long (its lease renewal checks the mark). One pipelined write per interval for all the
    jobs watched here, whatever the number of followers; nothing at all when the setting is 0.
    """

    def __init__(self, store: Store, abandon_seconds: float) -> None:
        self._store = store
        self.enabled = abandon_seconds > 0
        self._interval = min(max(abandon_seconds / 4, 0.1), 5.0)
        self._open: collections.Counter[str] = collections.Counter()
        self._polled: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._run(), name="reviewstream-watchers")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=2.0)
            self._task = None

    def opened(self, job_id: str) -> None:
        """A follower of the job opened here (``closed`` when it closes)."""
        if self.enabled:
            self._open[job_id] += 1
            self._polled.add(job_id)  # marked at the next write even if it closes before

    def closed(self, job_id: str) -> None:
        """That follower closed."""
        if self.enabled:
            self._open[job_id] -= 1
            if not self._open[job_id]:
                del self._open[job_id]

    def polled(self, job_id: str) -> None:
        """Someone read the job just now (a short poll)."""
        if self.enabled:
            self._polled.add(job_id)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            seen, self._polled = self._polled | self._open.keys(), set()
            if not seen:
                continue
            try:
                await self._store.jobs.seen(sorted(seen))
            except StoreError as e:
                log.warning("marking watched jobs failed: %s", e)
