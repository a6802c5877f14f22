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
from live import new_job, stored


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
