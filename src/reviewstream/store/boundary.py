"""The store's boundary with redis-py: Redis failures wrapped as ``StoreError``, and scripts run
by SHA.

Every Redis call of the store runs inside ``redis_errors``, so that callers see one exception
(``StoreError``, which the web edge answers 503) whatever redis-py raised, and a cancellation
that lands in a call stays a cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from ..errors import StoreError

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


class Script:
    """A Lua script run with EVALSHA, sent whole with EVAL whenever Redis does not know it (a
    restart, or a cluster node that has not run it yet): EVAL caches it for the next EVALSHA.

    Not redis-py's ``register_script``: that repeats an import and a ``Pipeline`` isinstance
    test through a typing Protocol on every call, and an append is the hot path. Not SCRIPT
    LOAD either: on a Redis Cluster that goes to every master, and fails while any of them is
    down.
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
