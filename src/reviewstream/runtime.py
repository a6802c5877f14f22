"""The runtime: what a reviewstream process holds open, opened and closed in one place.

``open_runtime(settings, worker=...)`` opens, inside one ``AsyncExitStack``: Redis (a private
embedded redis-server when no URL is set), the job store, the process's hub, the gatekeeper
(API keys and stream tokens), admission (quotas, stream counts, the queued-job reaper) and, with
``worker=True``, the providers' HTTP client and a ``Worker`` on a Redis pool of its own (a burst
of followers must never starve appends and lease renewals). The API's lifespan
(``web.create_app``) and ``reviewstream worker`` both run on it, so they cannot drift apart.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .admission import Admission, StreamCounter, Watchers
from .embedded import EmbeddedRedis
from .hub import Hub
from .keys import Keys
from .settings import Settings
from .store import JobStore
from .tenancy import Gatekeeper, Keyring, StreamTokens
from .worker import Reaper, Worker

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Runtime:
    """The long-lived parts of one process."""

    settings: Settings
    redis: aioredis.Redis
    store: JobStore
    hub: Hub
    gate: Gatekeeper
    admission: Admission
    streams: StreamCounter
    watchers: Watchers
    worker: Worker | None


def redis_retry() -> Retry:
    """The one retry policy of every pool: a dropped or stale connection is retried at once,
    then with jittered backoff for about two seconds, before a command fails."""
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=6)


def redis_client(url: str, settings: Settings) -> aioredis.Redis:
    """A client whose pool waits for a free connection instead of failing at its limit.

    Connections idle for a while are checked before use (``health_check_interval``), and
    connection errors and timeouts are retried (``redis_retry``), so a job accepted right after
    Redis restarted does not fail on a connection the restart closed.
    """
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


def hub_for(redis: aioredis.Redis, keys: Keys, settings: Settings) -> Hub:
    return Hub(
        redis,
        keys,
        buffer_tokens=settings.hub_buffer_tokens,
        subscribe_timeout=settings.subscribe_timeout_seconds,
        linger_seconds=settings.feed_linger_seconds,
        resync_seconds=settings.resync_seconds,
        coalesce_seconds=settings.coalesce_ms / 1000,
    )


async def gatekeeper(settings: Settings, store: JobStore) -> Gatekeeper:
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
        else await store.shared_secret()
        if keyring is not None
        else b""
    )
    return Gatekeeper(keyring, StreamTokens(secret, settings.stream_token_ttl_seconds))


@contextlib.asynccontextmanager
async def open_runtime(settings: Settings, *, worker: bool) -> AsyncIterator[Runtime]:
    """Open everything a process needs; closes it all, in reverse order, on the way out."""
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(redis_url(settings))
        redis = redis_client(url, settings)
        stack.push_async_callback(redis.aclose)
        keys = Keys(settings.key_prefix)
        store = JobStore(redis, keys, retention_seconds=settings.retention_seconds)
        await store.ensure_group()
        hub = hub_for(redis, keys, settings)
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
        running: Worker | None = None
        if worker:
            http = await stack.enter_async_context(provider_http_client(settings))
            worker_redis = redis_client(url, settings)
            stack.push_async_callback(worker_redis.aclose)
            worker_store = JobStore(
                worker_redis, keys, retention_seconds=settings.retention_seconds
            )
            running = Worker(worker_store, hub, settings, http)
            await running.start()
            stack.push_async_callback(running.aclose)
        admission = Admission(store, settings)
        yield Runtime(settings, redis, store, hub, gate, admission, streams, watchers, running)
