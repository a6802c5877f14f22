"""StreamStore: Durable Streams written by others, on a job's key layout (``scripts.streams``).

An outside stream's id is ``s`` and 31 hex digits of the SHA-256 of its path: it never collides
with a job's id (a uuid's 32 hex digits), and its keys are ``keys.meta/chunks/times/channel``
of that id, one hash tag, one slot. So the hub, feeds and followers follow it as they follow a
job, and the read path reads it with ``JobStore.read``. Its bytes are stored as strings with one
latin-1 code point per byte (the Redis clients decode replies as text), which its meta says
(``encoding``). Each method is one script on the stream's slot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from ..errors import JobNotFound, StreamGone
from ..keys import Keys
from . import notices
from .boundary import Script, redis_errors
from .scripts import streams as scripts
from .scripts.streams import StreamCreate, StreamDelete, StreamWrite

_META = ("kind", "content_type", "ttl", "expires_at", "tenant", "status", "deleted")


def stream_id(path: str) -> str:
    """The internal id of the outside stream at ``path`` (below ``/v1/stream/``)."""
    return "s" + hashlib.sha256(path.encode()).hexdigest()[:31]


@dataclass(frozen=True, slots=True)
class StreamMeta:
    """What the read path needs of an outside stream besides its chunks."""

    content_type: str
    ttl: str
    expires_at: str
    tenant: str
    closed: bool


@dataclass(frozen=True, slots=True)
class Producer:
    """An idempotent producer's request: ``Producer-Id``, ``-Epoch``, ``-Seq``."""

    producer_id: str
    epoch: int
    seq: int


@dataclass(frozen=True, slots=True)
class Written:
    """An append's outcome: its code, and the count (or producer number) it names."""

    code: StreamWrite
    value: int = 0


class StreamStore:
    """Outside streams on Redis, one stream's slot at a time (module docstring)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, *, sharded_pubsub: bool = False) -> None:
        self.redis = redis
        self.keys = keys
        announce = notices.announcing(sharded=sharded_pubsub)
        self._create = Script(redis, scripts.CREATE)
        self._append = Script(redis, announce + scripts.APPEND)
        self._delete = Script(redis, announce + scripts.DELETE)
        self._touch = Script(redis, scripts.TOUCH)
        self._refer = Script(redis, scripts.REFER)
        self._release = Script(redis, scripts.RELEASE)

    def _keys(self, sid: str) -> list[str]:
        return [self.keys.meta(sid), self.keys.chunks(sid), self.keys.times(sid)]

    async def create(
        self,
        sid: str,
        *,
        path: str,
        content_type: str,
        media: str,
        chunks: Sequence[str],
        ttl: str,
        expires_at: str,
        expire_at_ms: str,
        closed: bool,
        tenant: str,
        fork: str = "",
        source: str = "",
    ) -> tuple[StreamCreate, int]:
        """Create the stream; its code (created, the same one there, a conflict) and count."""
        args: list[str | int | float] = [
            content_type,
            media,
            ttl,
            expires_at,
            expire_at_ms,
            "1" if closed else "",
            tenant,
            path,
            fork,
            source,
            len(chunks),
            *chunks,
        ]
        with redis_errors("create stream"):
            reply: Any = await self._create(keys=self._keys(sid), args=args)
        return StreamCreate(reply[0]), int(reply[1]) if len(reply) > 1 else 0

    async def append(
        self,
        sid: str,
        *,
        media: str,
        chunks: Sequence[str],
        seq: str,
        producer: Producer | None,
        close: bool,
    ) -> Written:
        """Append ``chunks`` (and close, when asked), checked and announced in one step."""
        p = producer
        args: list[str | int | float] = [
            self.keys.channel(sid),
            media,
            seq,
            p.producer_id if p else "",
            p.epoch if p else 0,
            p.seq if p else 0,
            "1" if close else "",
            len(chunks),
            *chunks,
        ]
        with redis_errors("append to stream"):
            reply: Any = await self._append(keys=self._keys(sid), args=args)
        return Written(StreamWrite(reply[0]), int(reply[1]) if len(reply) > 1 else 0)

    async def delete(self, sid: str) -> StreamDelete:
        """Delete the stream (or mark it deleted while forks refer to it); a deleted fork gives
        back its reference to its source, and so on up the chain."""
        with redis_errors("delete stream"):
            reply: Any = await self._delete(keys=self._keys(sid), args=[self.keys.channel(sid)])
            code, source = StreamDelete(reply[0]), str(reply[1]) if len(reply) > 1 else ""
            if code is StreamDelete.DELETED:
                await self.release(source)
        return code

    async def refer(self, source: str) -> int:
        """Take a reference to ``source`` for a new fork: 1, 0 (no such stream), -1 (deleted)."""
        with redis_errors("fork stream"):
            return int(await self._refer(keys=[self.keys.meta(source)], args=[]))

    async def release(self, source: str) -> None:
        """Give back a fork's reference to ``source``; a deleted source nobody holds goes, and
        gives back its own (one script on each stream's slot, up the chain)."""
        with redis_errors("release fork source"):
            while source:
                source = str(await self._release(keys=self._keys(source), args=[]))

    async def source(self, sid: str, offset: int | None) -> tuple[dict[str, str], int, list[str]]:
        """A fork source's meta, its count, and its chunks up to ``offset`` (None: all) and the
        next one (for a sub-offset), read at once on its slot."""
        fields = (
            "kind",
            "content_type",
            "media",
            "ttl",
            "expires_at",
            "expire_at_ms",
            "deleted",
            "tenant",
        )
        with redis_errors("read fork source"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hmget(self.keys.meta(sid), *fields)
                pipe.llen(self.keys.chunks(sid))
                pipe.lrange(self.keys.chunks(sid), 0, -1 if offset is None else offset)
                meta, count, chunks = await pipe.execute()
        values = {k: str(v or "") for k, v in zip(fields, meta, strict=True)}
        return values, int(count), list(chunks)

    async def meta(self, sid: str, *, touch: bool = False) -> StreamMeta:
        """The stream's meta; ``touch`` restarts a sliding TTL (a read). ``JobNotFound`` if
        there is no such outside stream."""
        with redis_errors("read stream"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hmget(self.keys.meta(sid), *_META)
                replies = await pipe.execute()
            if touch and replies[0][2]:
                await self._touch(keys=self._keys(sid), args=[])
        kind, content_type, ttl, expires_at, tenant, status, deleted = replies[0]
        if kind != "stream" or deleted == "1":
            raise JobNotFound(sid) if kind != "stream" else StreamGone(sid)
        return StreamMeta(
            content_type=content_type or "application/octet-stream",
            ttl=ttl or "",
            expires_at=expires_at or "",
            tenant=tenant or "",
            closed=status != "running",
        )
