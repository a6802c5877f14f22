"""Shared fixtures: a real redis-server started by the suite, a fresh database per test, and real
uvicorn servers on 127.0.0.1 for the HTTP, SSE and WebSocket tests.

A missing redis-server is a failure, not a skip: every test here is about real Redis behaviour.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis.asyncio as aioredis
from redis import Redis as SyncRedis

from reviewstream.settings import Settings
from reviewstream.web import create_app

from tests.support.cluster import LocalCluster
from tests.support.redis_server import redis_process
from tests.support.servers import serve
from tests.support.upstreams import ScriptedUpstream, running

# Apps served inside the test process (``create_app``) run their worker on the test's event
# loop: a worker process per app would add an interpreter start to every test. Processes the
# tests start (``procs.environment``, test_embedded.py) drop every REVIEWSTREAM_ variable and
# run the default placement; tests/test_runtime.py runs each placement on purpose.
os.environ["REVIEWSTREAM_SERVE_WORKERS"] = "inline"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A real redis-server for the whole session."""
    with redis_process() as (_, url):
        yield url


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis, flushed before each test."""
    client = SyncRedis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A local 3-master Redis Cluster (tests/cluster.py), started once, only for tests that ask
    for it. Redis >= 7 missing is a failure."""

    try:
        cluster = LocalCluster()
    except RuntimeError as e:  # no Redis >= 7
        pytest.fail(str(e))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(redis_cluster: LocalCluster) -> LocalCluster:
    """The session's cluster with every master up (a test may have killed one), flushed."""
    redis_cluster.heal()
    return redis_cluster


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def settings(redis_url: str) -> Settings:
    """Fast settings for tests: a quick simulated model and short leases."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=redis_url,
        sim_tokens_per_second=400,
        sim_first_token_ms=10,
        lease_seconds=1.0,
        claim_idle_seconds=1.0,
        reap_interval_seconds=0.1,
        upstream_backoff_base=0.01,
    )


@pytest.fixture(scope="module")
async def base_url(redis_server: str, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """One server for the whole module, on the session's Redis under a key prefix of its own.

    For modules whose tests share a server: an app's shutdown waits out the worker's 1 s queue
    read, too slow to pay per test. Tests using it must not use the function-scoped
    ``settings``/``redis_url`` fixtures: they flush Redis under this running server. The pace
    lets live modes see tokens arrive (~0.5 s a job).
    """
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=redis_server,
        key_prefix=f"rs-{request.module.__name__}",
        sim_tokens_per_second=200,
        sim_first_token_ms=10,
    )
    async with serve(create_app(settings)) as base:
        yield base


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """The app under uvicorn on the test's settings, and a client to it: (base URL, client)."""
    async with serve(create_app(settings)) as base:
        limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as c:
            yield base, c


@pytest.fixture(scope="module")
async def scripted_server() -> AsyncIterator[ScriptedUpstream]:
    """A loopback HTTP server speaking the OpenAI and Anthropic streaming formats, per module."""

    async with running(ScriptedUpstream()) as upstream:
        yield upstream


@pytest.fixture
def upstream(scripted_server: ScriptedUpstream) -> ScriptedUpstream:
    """The module's scripted server, with an empty script and no recorded requests."""
    scripted_server.reset()
    return scripted_server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client
