"""The store's boundary with redis-py: Redis failures wrapped as ``StoreError``, scripts run by
SHA, and many calls of one script in one round trip (one per node on a Redis Cluster).

Every Redis call of the store runs inside ``redis_errors``, so that callers see one exception
(``StoreError``, which the web edge answers 503) whatever redis-py raised, and a cancellation
that lands in a call stays a cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import StoreError
from ..observe import metrics as observe

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
        observe.redis_error(operation)
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


# One call of a script: its keys (one slot's) and its arguments.
Call = tuple[Sequence[str], Sequence[str | int | float]]
# A command's words: its name, then its arguments.
Command = tuple[str | int | float, ...]


def node_groups(redis: aioredis.Redis, first_keys: Sequence[str]) -> list[list[int]]:
    """The indices of ``first_keys`` grouped by the Redis Cluster master that serves each (by
    the client's slot map); one group on a single Redis. A key whose slot no known node serves
    goes with the first group: its call fails or is redirected there alone."""
    if not isinstance(redis, RedisCluster) or not first_keys:
        return [list(range(len(first_keys)))]
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(first_keys):
        try:
            name = redis.get_node_from_key(key).name
        except REDIS_FAILURES:
            name = ""
        groups.setdefault(name, []).append(i)
    return list(groups.values())


async def run_many(
    redis: aioredis.Redis,
    script: Script,
    calls: Sequence[Call],
    *,
    operation: str,
    master_seconds: float | None = None,
    lane: Lane | None = None,
) -> list[Any]:
    """Run ``script`` once per call in one round trip: a pipeline (not a transaction) on a
    single Redis, one per master on a Redis Cluster, the masters' at once.

    Each call's reply is in its place, or the exception its call met: a ``StoreError`` for
    every call of a pipeline that failed (a master down fails its own calls only), the
    ``ResponseError`` of a call Redis refused. By SHA on a single Redis, and sent whole to
    those that Redis did not know (a restart); whole on a cluster, whose pipeline refuses
    EVALSHA. ``master_seconds``: how long one master may take; past it, its calls get a
    ``StoreError`` (their fate unknown, as for any failed round trip), so that a master that
    is down and retried does not hold back the replies of the others. ``lane``: the connection
    to send on, on a single Redis (``Lane``).
    """
    replies: list[Any] = [None] * len(calls)
    evalsha = not isinstance(redis, RedisCluster)

    async def send(indices: list[int]) -> list[Any]:
        with redis_errors(operation):
            found = await _pipeline(redis, script, [calls[i] for i in indices], evalsha, lane)
            unknown = [j for j, reply in enumerate(found) if isinstance(reply, NoScriptError)]
            if unknown:
                again = await _pipeline(
                    redis, script, [calls[indices[j]] for j in unknown], False, lane
                )
                for j, reply in zip(unknown, again, strict=True):
                    found[j] = reply
        return found

    async def group(indices: list[int]) -> None:
        try:
            if master_seconds is None:
                found = await send(indices)
            else:
                async with asyncio.timeout(master_seconds):
                    found = await send(indices)
        except StoreError as e:
            found = [e] * len(indices)
        except TimeoutError:
            found = [StoreError(f"Redis did not answer in time during {operation}")] * len(indices)
        for i, reply in zip(indices, found, strict=True):
            replies[i] = reply

    groups = node_groups(redis, [keys[0] for keys, _ in calls])
    if len(groups) == 1:
        await group(groups[0])
    else:
        await asyncio.gather(*(group(indices) for indices in groups))
    return replies


async def _pipeline(
    redis: aioredis.Redis,
    script: Script,
    calls: Sequence[Call],
    evalsha: bool,
    lane: Lane | None,
) -> list[Any]:
    if isinstance(redis, RedisCluster):
        async with redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.eval(script.source, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))
    head = ("EVALSHA", script.sha) if evalsha else ("EVAL", script.source)
    return await send_all(
        redis, [(*head, len(keys), *keys, *args) for keys, args in calls], lane=lane
    )


# hiredis's stub types a command as a 1-tuple; it takes any number of arguments.
_pack: Any = hiredis.pack_command


class Lane:
    """A connection of ``redis``'s pool held by one user that sends one round trip at a time
    (a worker's group commit): ``send_all`` on it skips the pool's checkout and return — a
    lock, a check that the connection holds no stray data, and the pool's accounting — which
    cost more than a small flush's commands. A round trip that fails disconnects it, and the
    next reconnects, as on any pool connection. ``aclose`` gives it back to the pool."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis  # a cluster client has no pool: its pipelines take no lane
        self._conn: Any = None

    async def connection(self) -> Any:
        if self._conn is None:
            pool = self._redis.connection_pool
            self._conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        return self._conn

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._redis.connection_pool.release(conn)


async def send_all(
    redis: aioredis.Redis, commands: Sequence[Command], *, lane: Lane | None = None
) -> list[Any]:
    """``commands`` sent at once on one connection of the pool (``lane``'s, if given) and their
    replies read in order: a pipeline without redis-py's bookkeeping per command, which
    costs more than the command on the append path. A reply Redis refused is its
    ``ResponseError`` in its place; a connection error or timeout is retried as redis-py's
    pipeline does (the client's retry policy, on a fresh connection), and otherwise raised.
    What is sent must be safe to send twice: the store's batched scripts are."""
    packed = [_pack(command) for command in commands]
    pool = redis.connection_pool
    if lane is not None:
        conn = await lane.connection()
    else:
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]

    async def attempt() -> list[Any]:
        await conn.send_packed_command(packed)
        replies: list[Any] = []
        # The connection's read timeout bounds the replies together: redis-py would arm a
        # timer per reply (``math.inf``: none), which costs more than reading a small one.
        try:
            async with asyncio.timeout(conn.socket_timeout):
                for _ in commands:
                    try:
                        replies.append(await conn.read_response(timeout=math.inf))
                    except ResponseError as e:
                        replies.append(e)
        except TimeoutError as e:  # as redis-py's own read timeout: retried, then a failure
            raise RedisTimeoutError(f"no reply within {conn.socket_timeout}s") from e
        return replies

    async def failed(_: Exception) -> None:
        await conn.disconnect()

    try:
        replies: list[Any] = await conn.retry.call_with_retry(attempt, failed)
        return replies
    except BaseException:
        await conn.disconnect()  # replies may still be on their way: nobody else may read them
        raise
    finally:
        if lane is None:
            await pool.release(conn)
