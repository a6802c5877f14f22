"""JobQueue: the worker queue on Redis, partitioned into shards, and the leases of running
attempts.

Each shard (``Keys.queue_shards``; shard N's keys hash-tagged ``{qN}``) is a Redis stream with
the consumer group ``workers``, so an accepted job stays pending until a worker claims it, and a
sorted set of the leases of the attempts running from it, scored by deadline (ms, Redis clock).
A job is placed on one shard when it is created. Each method is one step on one shard's slot
(or, for the ones that take no shard, on each shard in turn); the steps a transition takes on
the job's own keys are ``Store``'s (``store.lifecycle``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from ..errors import StoreError
from ..keys import WORKER_GROUP, Keys
from .boundary import REDIS_FAILURES, Call, Script, redis_errors, run_many
from .scripts import queue as scripts
from .types import Lease, QueueEntry


def _entry(shard: int, entry_id: str, fields: dict[str, str]) -> QueueEntry:
    return QueueEntry(
        entry_id, fields["job"], shard, int(fields.get("attempt") or 0), fields.get("cause", "")
    )


class JobQueue:
    """The queue shards and their lease indexes (``redis.asyncio``)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._settle = Script(redis, scripts.SETTLE)
        self._lapse = Script(redis, scripts.LAPSE)
        self._extend = Script(redis, scripts.EXTEND)
        self._extend_all = Script(redis, scripts.EXTEND_ALL)
        self._expired = Script(redis, scripts.EXPIRED_LEASES)

    # -- entries ------------------------------------------------------------------------------

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

    async def enqueue(self, job_id: str, shard: int) -> None:
        """A new job's first queue entry (the shard side of ``Store.create``)."""
        with redis_errors("queue job"):
            await self.redis.xadd(self.keys.queue(shard), {"job": job_id, "attempt": 0})

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

    async def lengths(self) -> list[int]:
        """Each shard's entries (queued, and claimed but not yet settled): one ``XLEN`` per
        shard, for ``/metrics``."""
        with redis_errors("read queue lengths"):
            lengths = await asyncio.gather(
                *(self.redis.xlen(self.keys.queue(shard)) for shard in self.keys.shards)
            )
        return [int(n) for n in lengths]

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

    async def settle(self, entry: QueueEntry, lease: Lease | None, lease_ms: int) -> None:
        """Drop the entry and, unless it has one, give ``lease``'s attempt its lease, at once
        (the shard side of ``Store.claim``)."""
        keys = [self.keys.queue(entry.shard), self.keys.leases(entry.shard)]
        member = lease.member if lease is not None else ""
        with redis_errors("claim job"):
            await self._settle(keys=keys, args=[WORKER_GROUP, entry.entry_id, member, lease_ms])

    async def drop_entry(self, entry: QueueEntry) -> None:
        queue = self.keys.queue(entry.shard)
        with redis_errors("drop queue entry"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(queue, WORKER_GROUP, entry.entry_id)
                pipe.xdel(queue, entry.entry_id)
                await pipe.execute()

    # -- leases -------------------------------------------------------------------------------

    async def extend(self, lease: Lease, lease_ms: int) -> bool:
        """Extend the lease by ``lease_ms`` from now; False when it is gone (a reaper took it)
        (the shard side of ``Store.renew``)."""
        with redis_errors("renew lease"):
            return bool(
                await self._extend(
                    keys=[self.keys.leases(lease.shard)], args=[lease.member, lease_ms]
                )
            )

    async def extend_all(
        self, leases: Sequence[Lease], lease_ms: int, master_seconds: float | None = None
    ) -> list[bool | StoreError]:
        """``extend`` for many leases, one step per shard, every shard's at once (in one round
        trip on a single Redis): for each lease, whether it was extended, or the
        ``StoreError`` its shard's step met (``master_seconds``: a master's longest, as
        ``run_many``'s)."""
        by_shard: dict[int, list[int]] = {}
        for i, lease in enumerate(leases):
            by_shard.setdefault(lease.shard, []).append(i)
        shards = list(by_shard)
        calls: list[Call] = [
            ([self.keys.leases(shard)], [lease_ms, *(leases[i].member for i in by_shard[shard])])
            for shard in shards
        ]
        replies = await run_many(
            self.redis,
            self._extend_all,
            calls,
            operation="renew leases",
            master_seconds=master_seconds,
        )
        found: list[bool | StoreError] = [False] * len(leases)
        for shard, reply in zip(shards, replies, strict=True):
            for j, i in enumerate(by_shard[shard]):
                if isinstance(reply, StoreError):
                    found[i] = reply
                elif isinstance(reply, Exception):
                    found[i] = StoreError("Redis failed during renew leases")
                else:
                    found[i] = bool(int(reply[j]))
        return found

    async def take_lease(
        self, lease: Lease, cause: str, *, only_if_lapsed: bool = False
    ) -> QueueEntry | None:
        """Remove the attempt's lease (only if it lapsed, when asked) and add the entry for the
        next attempt (the shard side of ``Store.requeue``). None when the lease is gone
        (another process won) or still holds."""
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
