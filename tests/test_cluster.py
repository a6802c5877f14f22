"""Whole jobs on the local 3-master Redis Cluster (tests/cluster.py): the app with
``REVIEWSTREAM_REDIS_CLUSTER``, queue shards spread over the masters, sharded pub/sub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from reviewstream.keys import Keys
from reviewstream.settings import Settings
from reviewstream.web import create_app
from reviewstream.wire import MODES

import followers as fl
from cluster import LocalCluster
from conftest import serve
from live import new_job, stored, until_tokens


@pytest.fixture
async def app_on_cluster(cluster: LocalCluster) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    settings = Settings(
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
    )
    async with (
        serve(create_app(settings)) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as client,
    ):
        yield base, client


async def test_jobs_on_every_master_are_followed_to_their_end_in_every_mode(
    cluster: LocalCluster, app_on_cluster: tuple[str, httpx.AsyncClient]
) -> None:
    base, client = app_on_cluster
    broadcasts = [node.info().get("cluster_stats_messages_publish_sent") for node in cluster.nodes]
    keys = Keys("rs")
    jobs: dict[int, str] = {}
    for _ in range(60):  # until a job lives on every master
        job = await new_job(client)
        jobs.setdefault(cluster.node_of(keys.meta(job)).port, job)
        if len(jobs) == len(cluster.nodes):
            break
    assert len(jobs) == len(cluster.nodes)
    for mode in MODES:
        results = await asyncio.wait_for(
            asyncio.gather(*(fl.follow(mode, client, base, job) for job in jobs.values())), 30
        )
        for job, result in zip(jobs.values(), results, strict=True):
            assert len(result.ends) == 1 and result.ends[0]["status"] == "done", (mode, result.ends)
            assert result.tokens == await stored(client, job)
    # Every notice went by SPUBLISH to its own shard: none was broadcast over the cluster bus.
    assert [
        node.info().get("cluster_stats_messages_publish_sent") for node in cluster.nodes
    ] == broadcasts


async def test_a_killed_master_fails_its_own_jobs_with_503_and_no_other(
    cluster: LocalCluster, app_on_cluster: tuple[str, httpx.AsyncClient]
) -> None:
    """A replica-less master down: what a client sees of the jobs on its slots, and the rest.

    A job lives in two slots: its own keys' and its queue shard's (its entry until claimed, then
    its lease). The jobs "on other masters" here have both elsewhere; one whose shard is on the
    dead master waits with it (its lease can be neither renewed nor given up)."""
    base, client = app_on_cluster
    keys = Keys("rs", 3)
    victim, *others = cluster.nodes

    def homes(job: str) -> tuple[int, int]:
        queue = keys.queue(keys.shard_of(job))
        return cluster.node_of(keys.meta(job)).port, cluster.node_of(queue).port

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
    async with client.stream("GET", f"/jobs/{lost}/events") as events:
        assert events.status_code == 503
    for job in kept.values():
        assert (await client.get(f"/jobs/{job}")).status_code == 200
        result = await asyncio.wait_for(fl.follow("sse", client, base, job), 10)
        assert len(result.ends) == 1 and result.ends[0]["status"] == "done"
        assert result.tokens == await stored(client, job)
