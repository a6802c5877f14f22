"""Whole jobs on the local 3-master Redis Cluster (tests/cluster.py): the app with
``REVIEWSTREAM_REDIS_CLUSTER``, queue shards spread over the masters, sharded pub/sub: jobs on
every master in every mode, cancel, expiry, a lapsed lease reaped, random resumes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from reviewstream.keys import Keys
from reviewstream.runtime import CommandTable, job_store, redis_client, redis_cluster_client
from reviewstream.settings import Settings
from reviewstream.store import Script
from reviewstream.web import create_app
from reviewstream.wire import MODES

from tests.support import followers as fl
from tests.support.cluster import LocalCluster
from tests.support.live import new_job, stored, until_tokens
from tests.support.procs import environment, start, stop_all, wait_ready
from tests.support.servers import free_port, serve


def on_cluster(cluster: LocalCluster, **overrides: Any) -> Settings:
    """Fast test settings on the cluster, three queue shards."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=cluster.url,
        redis_cluster=True,
        queue_shards=3,
        sim_tokens_per_second=400,
        sim_first_token_ms=10,
        lease_seconds=1.0,
        claim_idle_seconds=1.0,
        reap_interval_seconds=0.1,
        redis_outage_seconds=1.0,  # a producer on a dead master gives up soon
        worker_grace_seconds=1.0,
    ).model_copy(update=overrides)


@contextlib.asynccontextmanager
async def app(settings: Settings, **options: Any) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    async with (
        serve(create_app(settings, **options)) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as client,
    ):
        yield base, client


@pytest.fixture
async def app_on_cluster(cluster: LocalCluster) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    async with app(on_cluster(cluster)) as (base, client):
        yield base, client


async def jobs_on_every_master(
    cluster: LocalCluster, client: httpx.AsyncClient, **body: Any
) -> list[str]:
    """New jobs until one lives on each master (their ids are random)."""
    keys = Keys("rs")
    jobs: dict[int, str] = {}
    for _ in range(60):
        job = await new_job(client, **body)
        jobs.setdefault(cluster.node_of(keys.meta(job)).port, job)
        if len(jobs) == len(cluster.nodes):
            return list(jobs.values())
    pytest.fail(f"60 jobs did not cover the {len(cluster.nodes)} masters")


async def test_jobs_on_every_master_are_followed_to_their_end_in_every_mode(
    cluster: LocalCluster, app_on_cluster: tuple[str, httpx.AsyncClient]
) -> None:
    base, client = app_on_cluster
    broadcasts = [node.info().get("cluster_stats_messages_publish_sent") for node in cluster.nodes]
    jobs = await jobs_on_every_master(cluster, client)
    for mode in MODES:
        results = await asyncio.wait_for(
            asyncio.gather(*(fl.follow(mode, client, base, job) for job in jobs)), 30
        )
        for job, result in zip(jobs, results, strict=True):
            assert len(result.ends) == 1 and result.ends[0]["status"] == "done", (mode, result.ends)
            assert result.tokens == await stored(client, job)
    # Every notice went by SPUBLISH to its own shard: none was broadcast over the cluster bus.
    assert [
        node.info().get("cluster_stats_messages_publish_sent") for node in cluster.nodes
    ] == broadcasts


async def test_cancel_ends_a_running_job_on_every_master(
    cluster: LocalCluster, app_on_cluster: tuple[str, httpx.AsyncClient]
) -> None:
    base, client = app_on_cluster
    jobs = await jobs_on_every_master(cluster, client, length_words=1500)
    followers = [asyncio.create_task(fl.sse(client, job)) for job in jobs]
    for job in jobs:
        await until_tokens(client, job, 1)
        assert (await client.delete(f"/jobs/{job}")).status_code == 204
    for job, follower in zip(jobs, followers, strict=True):
        result = await asyncio.wait_for(follower, 10)
        assert [end["status"] for end in result.ends] == ["cancelled"]
        assert result.tokens == await stored(client, job)
        assert len(result.tokens) < 1500  # it stopped well before its end


async def test_an_ended_job_expires_after_the_retention(cluster: LocalCluster) -> None:
    async with app(on_cluster(cluster, retention_seconds=1)) as (base, client):
        jobs = await jobs_on_every_master(cluster, client, length_words=50)
        for job in jobs:
            assert (await fl.long_poll(client, job)).ends[0]["status"] == "done"
        await asyncio.sleep(1.5)
        for job in jobs:
            r = await client.get(f"/jobs/{job}")
            assert r.status_code == 404 and "expired after retention" in r.json()["error"], r.text


async def test_a_lapsed_lease_is_reaped_and_the_job_continued(cluster: LocalCluster) -> None:
    """A producer that claimed a job on each master, wrote three tokens and died: an API
    process's reaper requeues each job when its lease lapses, and a worker continues it after
    the stored tokens."""
    settings = on_cluster(cluster)
    redis = redis_client(cluster.url, settings)
    store = job_store(redis, Keys(settings.key_prefix, settings.queue_shards), settings)
    try:
        async with app(settings, run_worker=False) as (base, client):
            await store.workers.heartbeat("dead", 60_000)  # alive, as far as admission knows
            jobs = await jobs_on_every_master(cluster, client, length_words=100)
            entries = {
                e.job_id: e
                for shard in store.keys.shards
                for e in await store.queue.next_entries("dead", 100, 100, shard=shard)
            }
            for job in jobs:
                claim = await store.claim(entries[job], "dead", 300)
                assert claim is not None
                tokens = ["One ", "two ", "three "]
                assert await store.jobs.append(job, claim.owner, tokens, offset=0)
            for job in jobs:  # requeued by the API process's reaper: queued, attempt 1 lost
                async with asyncio.timeout(10):
                    while (await client.get(f"/jobs/{job}")).json()["status"] != "queued":
                        await asyncio.sleep(0.05)
            async with app(settings) as (base2, client2):  # a worker appears
                for job in jobs:
                    result = await asyncio.wait_for(fl.sse(client2, job), 30)
                    page = (await client2.get(f"/jobs/{job}", params={"limit": 10000})).json()
                    assert [end["status"] for end in result.ends] == ["done"]
                    assert page["attempts"] == 2
                    assert result.tokens[:3] == ["One ", "two ", "three "]
                    assert result.tokens == page["tokens"]
                    digest = hashlib.sha256(result.text.encode()).hexdigest()
                    assert result.ends[0]["sha256"] == digest
                    causes = json.loads((await store.jobs.meta(job))["causes"])
                    assert len(causes) == 1 and "lease" in causes[0], causes
    finally:
        await redis.aclose()


async def test_a_dead_master_holds_back_no_other_shards_reaping(cluster: LocalCluster) -> None:
    """The reaper goes shard by shard and job by job: the first shard's master is down, and
    on a live shard the first lapsed lease is of a job whose keys are on that master; the next
    one, all on live masters, is still reaped (requeued) in time."""
    settings = on_cluster(cluster)
    redis = redis_client(cluster.url, settings)
    store = job_store(redis, Keys(settings.key_prefix, settings.queue_shards), settings)
    victim = cluster.node_of(store.keys.queue(0))
    shard = next(s for s in store.keys.shards if cluster.node_of(store.keys.queue(s)) != victim)
    try:
        async with app(settings, run_worker=False) as (_, client):
            await store.workers.heartbeat("dead", 60_000)  # alive, as far as admission knows
            stuck = kept = None  # keys on the victim / on a live master, both queued on `shard`
            for _ in range(200):
                job = await new_job(client)
                if store.keys.shard_of(job) == shard:
                    if cluster.node_of(store.keys.meta(job)) == victim:
                        stuck = stuck or job
                    else:
                        kept = kept or job
                if stuck and kept:
                    break
            assert stuck and kept
            read = await store.queue.next_entries("dead", 200, 100, shard=shard)
            entries = {e.job_id: e for e in read}
            for job in (stuck, kept):  # the stuck one's lease lapses first
                assert await store.claim(entries[job], "dead", 300) is not None
            victim.kill()
            async with asyncio.timeout(10):
                while (await client.get(f"/jobs/{kept}")).json()["status"] != "queued":
                    await asyncio.sleep(0.05)
    finally:
        await redis.aclose()


async def test_random_disconnects_and_resumes_lose_and_duplicate_nothing(
    cluster: LocalCluster,
) -> None:
    rng = random.Random(20261202)
    async with app(on_cluster(cluster, sim_tokens_per_second=300)) as (base, client):
        jobs = await jobs_on_every_master(cluster, client, length_words=120)
        runs = [(mode, job) for job in jobs for mode in MODES]
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(fl.resuming(m, client, base, j, rng) for m, j in runs)), 60
        )
        texts = {job: await stored(client, job) for job in jobs}
    assert sum(n for _, n in outcomes) >= 50, outcomes
    for (mode, job), (result, _) in zip(runs, outcomes, strict=True):
        assert result.tokens == texts[job], f"{mode} on {job}"
        assert len(result.ends) == 1


async def test_a_killed_master_fails_its_own_jobs_with_503_and_no_other(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """A replica-less master down: what a client sees of the jobs on its slots, and the rest.

    A job lives in two slots: its own keys' and its queue shard's (its entry until claimed, then
    its lease). The jobs "on other masters" here have both elsewhere; one whose shard is on the
    dead master waits with it (its lease can be neither renewed nor given up). The API and the
    worker run as processes of their own, as in production."""
    env = environment(cluster.url, {
        "redis_cluster": "true", "queue_shards": "3", "sim_tokens_per_second": "100",
        "lease_seconds": "1", "reap_interval_seconds": "0.1", "redis_outage_seconds": "1",
    })  # fmt: skip
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = await start("api", ["serve", "--api-only", "--port", str(port)], env, tmp_path)
    processes = [api, await start("worker", ["worker"], env, tmp_path)]
    keys = Keys("rs", 3)
    victim, *others = cluster.nodes

    def homes(job: str) -> tuple[int, int]:
        queue = keys.queue(keys.shard_of(job))
        return cluster.node_of(keys.meta(job)).port, cluster.node_of(queue).port

    try:
        await wait_ready(base, api)
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            lost: str | None = None
            kept: dict[int, str] = {}
            for _ in range(100):
                job = await new_job(client)
                own, shard = homes(job)
                if own == victim.port:
                    lost = lost or job
                elif shard != victim.port:
                    kept.setdefault(own, job)
                if lost is not None and len(kept) == len(others):
                    break
            assert lost is not None and len(kept) == len(others)
            for job in (lost, *kept.values()):
                await asyncio.wait_for(until_tokens(client, job, 1), 10)  # claimed: running
            victim.kill()
            r = await client.get(f"/jobs/{lost}")
            assert r.status_code == 503 and r.headers["Retry-After"], r.text
            assert "storage unavailable" in r.json()["error"], r.text
            async with client.stream("GET", f"/jobs/{lost}/events") as events:
                assert events.status_code == 503
            for job in kept.values():
                assert (await client.get(f"/jobs/{job}")).status_code == 200
                result = await asyncio.wait_for(fl.follow("sse", client, base, job), 20)
                assert len(result.ends) == 1 and result.ends[0]["status"] == "done"
                assert result.tokens == await stored(client, job)
    finally:
        await stop_all(processes)


async def test_the_command_table_comes_from_a_master_that_answers(cluster: LocalCluster) -> None:
    """redis-py asks one node for its command table at every topology refresh, and that node
    where XREADGROUP's keys are: with that master down, every command of the client failed,
    on every master, until it was back. ``CommandTable`` asks the others."""
    client = redis_cluster_client(cluster.url, on_cluster(cluster))
    try:
        await client.initialize()
        table = client.commands_parser
        assert isinstance(table, CommandTable)
        masters = {node.port: node for node in cluster.nodes}
        first, *_ = client.get_primaries()
        masters[int(first.port)].kill()
        await table.initialize(first)  # what a refresh does with ``first`` as its default node
        assert table.node is not first and table.node.port in masters
        read = ("XREADGROUP", "GROUP", "g", "c", "STREAMS", "rs:{q1}:queue", ">")
        assert list(await table.get_keys(*read) or ()) == ["rs:{q1}:queue"]
        masters[int(table.node.port)].kill()  # the one it asks where keys are goes down too
        assert list(await table.get_keys(*read) or ()) == ["rs:{q1}:queue"]
        assert table.node.port in masters and masters[int(table.node.port)].alive
    finally:
        await client.aclose()


async def test_scripts_run_on_a_master_new_to_them_while_another_is_down(
    cluster: LocalCluster,
) -> None:
    """A script a master has not run yet (it restarted, or just took the slot) is sent whole
    with EVAL on that master alone: SCRIPT LOAD goes to every master and fails while one is
    down, which failed the live masters' jobs with it."""
    settings = on_cluster(cluster)
    client = redis_client(cluster.url, settings)
    store = job_store(client, Keys("rs", 3), settings)
    try:
        victim, live, *_ = cluster.nodes
        job = next(
            j for j in (f"job{i}" for i in range(1000)) if cluster.node_of(f"rs:{{{j}}}") is live
        )
        meta = store.keys.meta(job)
        await client.hset(meta, mapping={"status": "running"})
        count = Script(cast(Any, client), "return redis.call('INCR', KEYS[1])")
        live.client().script_flush()
        victim.kill()
        assert await count(keys=[f"{{{job}}}:n"], args=[]) == 1
        await store.jobs.seen([job])
        assert await client.hget(meta, "seen_ms")
    finally:
        await client.aclose()
