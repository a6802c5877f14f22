"""The runtime: what a reviewstream process holds open, opened and closed in one place.

``open_runtime(settings, worker=...)`` opens, inside one ``AsyncExitStack``: Redis (a private
embedded redis-server when no URL is set), the job store, the process's hub, the gatekeeper
(API keys and stream tokens), admission (quotas, stream counts, the queued-job reaper) and, with
``worker=True``, the workers, where ``workers_in`` says (``REVIEWSTREAM_SERVE_WORKERS`` under
``serve``: inline, a thread, or a child process; ``workers.placement``). A worker opens its own
Redis pool, hub and providers' HTTP client here (``running_worker``), wherever it runs.

The API's lifespan (``web.create_app``) and ``reviewstream worker`` both run on it, so they
cannot drift apart.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

import httpx
import redis.asyncio as aioredis
from redis._parsers import AsyncCommandsParser
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .admission import Admission, StreamCounter, Watchers
from .hub import Hub
from .keys import Keys
from .processes.redis_server import EmbeddedRedis
from .settings import Settings, WorkersIn
from .store import Store
from .tenancy import Gatekeeper, Keyring, StreamTokens
from .workers import Producers, Reaper, Worker, open_workers

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Runtime:
    """The long-lived parts of one process."""

    settings: Settings
    redis: RedisClient
    store: Store
    hub: Hub
    gate: Gatekeeper
    admission: Admission
    streams: StreamCounter
    watchers: Watchers
    worker: Producers | None


def redis_retry() -> Retry:
    """The one retry policy of every pool: a dropped or stale connection is retried at once,
    then with jittered backoff for about two seconds, before a command fails."""
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=6)


# A single Redis, or a Redis Cluster (REVIEWSTREAM_REDIS_CLUSTER).
RedisClient = aioredis.Redis | RedisCluster


def redis_client(url: str, settings: Settings) -> RedisClient:
    """A client whose pool waits for a free connection instead of failing at its limit.

    Connections idle for a while are checked before use (``health_check_interval``), and
    connection errors and timeouts are retried (``redis_retry``), so a job accepted right after
    Redis restarted does not fail on a connection the restart closed. With
    ``REVIEWSTREAM_REDIS_CLUSTER``: ``redis_cluster_client``.
    """
    if settings.redis_cluster:
        return redis_cluster_client(url, settings)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_seconds,
        decode_responses=True,
        retry=redis_retry(),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=5,
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes both


def redis_cluster_client(url: str, settings: Settings) -> RedisCluster:
    """redis-py's cluster client, from any node's URL: it learns the others and the slots from
    that node, sends each command to the master of its key's slot and follows MOVED/ASK.

    ``redis_retry`` gives its number of attempts on connection errors, timeouts and a cluster
    that is down or reconfiguring (with a topology refresh in between). Slots need not all be
    covered: with a master down, the others' jobs keep working. Its pools (one per node, of
    ``redis_max_connections``) do not wait at their limit: a burst beyond fails (a 503).
    """
    client = RedisCluster.from_url(
        url,
        decode_responses=True,
        max_connections=settings.redis_max_connections,
        retry=redis_retry(),
        require_full_coverage=False,
        health_check_interval=5,
    )
    client.commands_parser = CommandTable(client.get_primaries)
    return client


class CommandTable(AsyncCommandsParser):
    """redis-py's table of commands (where each one's keys are), read from a master that answers.

    redis-py reads ``COMMAND`` from its default node at every topology refresh, which follows
    any connection error, and asks that node where a command's keys are when they can move
    (``XREADGROUP``). When that node is a master that is down, the refresh fails, and with it
    every command of the client, on every node, until that master is back (redis-py 8.1): one
    dead master would stop every job. This table asks the other masters in turn.
    """

    def __init__(self, masters: Callable[[], list[ClusterNode]]) -> None:
        super().__init__()
        self._masters = masters

    async def initialize(self, node: ClusterNode | None = None) -> None:
        first = node or getattr(self, "node", None)
        await self._load([] if first is None else [first])

    async def _load(self, preferred: list[ClusterNode], avoid: ClusterNode | None = None) -> None:
        error: Exception = RedisConnectionError("no master of the cluster is known")
        others = [node for node in self._masters() if node not in preferred]
        for node in preferred + others:
            if node is avoid:
                continue
            try:
                await super().initialize(node)
                return
            except (RedisConnectionError, RedisTimeoutError) as e:
                error = e
        raise error

    async def _get_moveable_keys(self, *args: Any) -> tuple[str, ...] | None:
        try:
            return await super()._get_moveable_keys(*args)
        except (RedisConnectionError, RedisTimeoutError):
            await self._load([], avoid=self.node)
            return await super()._get_moveable_keys(*args)


def job_store(redis: RedisClient, keys: Keys, settings: Settings) -> Store:
    """The store every process builds on ``redis`` (one place for its settings). On a cluster
    its scripts announce with SPUBLISH, which the hub's sharded subscriber hears. ``Store``
    is typed for ``redis.asyncio.Redis``; the cluster client has the same commands (routed by
    their keys' slot), hence the cast."""
    return Store(
        cast(aioredis.Redis, redis),
        keys,
        retention_seconds=settings.retention_seconds,
        sharded_pubsub=settings.redis_cluster,
    )


def provider_http_client(settings: Settings) -> httpx.AsyncClient:
    """The HTTP client every provider of a process streams through."""
    timeout = httpx.Timeout(
        connect=settings.upstream_connect_timeout,
        read=settings.upstream_idle_timeout,
        write=settings.upstream_connect_timeout,
        pool=settings.upstream_connect_timeout,
    )
    return httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=None))


@contextlib.asynccontextmanager
async def redis_url(settings: Settings) -> AsyncIterator[str]:
    """The configured Redis URL, or that of a private embedded redis-server when none is set."""
    if settings.redis_url is not None:
        yield settings.redis_url
        return
    embedded = EmbeddedRedis()
    try:
        yield await embedded.start()
    finally:
        await embedded.aclose()


def hub_for(
    redis: RedisClient, store: Store, settings: Settings, *, ends_only: bool = False
) -> Hub:
    """The process's hub on ``redis``; it checks quiet jobs through ``store.jobs``.
    ``ends_only``: a worker's own, which hears its jobs' ends and none of their tokens."""
    return Hub(
        redis,
        store.keys,
        store.jobs,
        buffer_tokens=settings.hub_buffer_tokens,
        subscribe_timeout=settings.subscribe_timeout_seconds,
        linger_seconds=settings.feed_linger_seconds,
        resync_seconds=settings.resync_seconds,
        coalesce_seconds=settings.coalesce_ms / 1000,
        ends_only=ends_only,
    )


async def gatekeeper(settings: Settings, store: Store) -> Gatekeeper:
    """API keys from the settings; the token secret from the settings or shared via Redis."""
    keyring = None
    if settings.api_keys is not None and settings.api_keys.get_secret_value().strip():
        keyring = Keyring.parse(settings.api_keys.get_secret_value())
    else:
        log.warning(
            "REVIEWSTREAM_API_KEYS is unset: open mode, anyone who can reach this service may"
            " create, read and cancel any job"
        )
    configured = settings.token_secret
    secret = (
        configured.get_secret_value().encode()
        if configured is not None
        else await store.workers.shared_secret()
        if keyring is not None
        else b""
    )
    return Gatekeeper(keyring, StreamTokens(secret, settings.stream_token_ttl_seconds))


@contextlib.asynccontextmanager
async def running_worker(
    url: str, keys: Keys, settings: Settings, hub: Hub | None = None
) -> AsyncIterator[Worker]:
    """A started ``Worker`` on this event loop, on a Redis pool of its own; ``hub``: the
    process's (inline), or none to open one of its own (a worker with a loop of its own)."""
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(provider_http_client(settings))
        redis = redis_client(url, settings)
        stack.push_async_callback(redis.aclose)
        store = job_store(redis, keys, settings)
        if hub is None:
            hub = hub_for(redis, store, settings, ends_only=True)
            await hub.start()
            stack.push_async_callback(hub.aclose)
        worker = Worker(store, hub, settings, http)
        await worker.start()
        stack.push_async_callback(worker.aclose)
        yield worker


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings, *, worker: bool, workers_in: WorkersIn = "inline", followers: bool = True
) -> AsyncIterator[Runtime]:
    """Open everything a process needs; closes it all, in reverse order, on the way out.
    ``followers``: the process serves followers (an API); without, its hub hears the ends of
    the jobs its workers run, none of their tokens (``reviewstream worker``).

    The workers are opened last, so they are closed first: they hand their jobs over while
    Redis (embedded or not) and the hub are still there.
    """
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(redis_url(settings))
        redis = redis_client(url, settings)
        stack.push_async_callback(redis.aclose)
        keys = Keys(settings.key_prefix, settings.queue_shards)
        store = job_store(redis, keys, settings)
        await store.queue.ensure_group()
        hub = hub_for(redis, store, settings, ends_only=not followers)
        await hub.start()
        stack.push_async_callback(hub.aclose)
        gate = await gatekeeper(settings, store)
        streams = StreamCounter(store, settings.max_streams_per_key)
        await streams.start()
        stack.push_async_callback(streams.aclose)
        watchers = Watchers(store, settings.abandon_seconds)
        await watchers.start()
        stack.push_async_callback(watchers.aclose)
        reaper = Reaper(store, settings)
        await reaper.start()
        stack.push_async_callback(reaper.aclose)
        running: Producers | None = None
        if worker:
            open_worker = functools.partial(running_worker, url, keys, settings)
            running = await stack.enter_async_context(
                open_workers(workers_in, open_worker, hub, url, settings, store)
            )
        admission = Admission(store, settings)
        yield Runtime(settings, redis, store, hub, gate, admission, streams, watchers, running)
