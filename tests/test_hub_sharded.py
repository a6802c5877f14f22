"""The hub on a Redis Cluster: sharded pub/sub, one subscription per node it needs.

On the local 3-master cluster (tests/cluster.py). Notifications are published here with
SPUBLISH by a cluster client, as the store's scripts do on a cluster; the hub must hear each
job's channel on the master that serves its slot, and get a channel back, with a new epoch,
when its slot moves or its master restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import cast

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from reviewstream.hub import Feed, Hub
from reviewstream.hub.subscribers import ShardedSubscriber
from reviewstream.keys import Keys
from reviewstream.runtime import open_runtime
from reviewstream.settings import Settings
from reviewstream.store import JobStore

from tests.support.cluster import ClusterNode, LocalCluster

KEYS = Keys("t")


def jobs_on_every_master(cluster: LocalCluster) -> dict[int, str]:
    """One job id per master (by port), its channel served there."""
    found: dict[int, str] = {}
    for i in itertools.count():
        job = f"job{i}"
        found.setdefault(cluster.node_of(KEYS.channel(job)).port, job)
        if len(found) == len(cluster.nodes):
            return found
    raise AssertionError("unreachable")


def tokens(offset: int, *words: str) -> str:
    """A tokens notice, as the APPEND script publishes it."""
    return json.dumps({"offset": offset, "ts": 1.0, "tokens": list(words)})


@contextlib.asynccontextmanager
async def cluster_client(cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(cluster.url, decode_responses=True, require_full_coverage=False)
    try:
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def hub_on(cluster: LocalCluster) -> AsyncIterator[tuple[Hub, ShardedSubscriber]]:
    async with cluster_client(cluster) as client:
        store = JobStore(cast(aioredis.Redis, client), KEYS, retention_seconds=0)
        hub = Hub(client, KEYS, store, subscribe_timeout=10, linger_seconds=0.5)
        subscriber = hub._subscriber
        assert isinstance(subscriber, ShardedSubscriber)
        await hub.start()
        try:
            yield hub, subscriber
        finally:
            await hub.aclose()


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.02)


async def heard(feed: Feed, client: RedisCluster, offset: int, *words: str) -> None:
    """SPUBLISH a tokens notice on the feed's channel; until the feed holds it."""
    receivers = await client.spublish(feed.channel, tokens(offset, *words))
    assert receivers == 1  # the hub's subscription, on the channel's own master
    await until(lambda: feed.next_offset == offset + len(words), 5)


def shard_subscribers(node: ClusterNode, channel: str) -> int:
    with node.client() as client:
        _, count = client.execute_command("PUBSUB", "SHARDNUMSUB", channel)
    return int(count)


def bus_messages(node: ClusterNode, kind: str) -> int:
    """Messages of ``kind`` this node sent over the cluster bus (CLUSTER INFO's statistics)."""
    return int(node.info().get(f"cluster_stats_messages_{kind}_sent", 0))


async def test_followers_on_every_master_hear_spublish_each_on_its_own_node(
    cluster: LocalCluster,
) -> None:
    jobs = jobs_on_every_master(cluster)
    async with hub_on(cluster) as (hub, subscriber), cluster_client(cluster) as client:
        async with contextlib.AsyncExitStack() as stack:
            feeds = {
                port: await stack.enter_async_context(hub.join(job)) for port, job in jobs.items()
            }
            assert all(feed.confirmed.is_set() and feed.epoch == 1 for feed in feeds.values())
            # One sharded subscription per master, each holding the channels of its slots only.
            assert sorted(subscriber.nodes) == sorted(node.name for node in cluster.nodes)
            for node in cluster.nodes:
                for port, feed in feeds.items():
                    assert shard_subscribers(node, feed.channel) == (port == node.port)
                assert subscriber.node_of(feeds[node.port].channel) == node.name
            publishes = {node.port: bus_messages(node, "publish") for node in cluster.nodes}
            for feed in feeds.values():
                await heard(feed, client, 0, "a", "b")
                await heard(feed, client, 2, "c")
            tokens_got = {port: feed.tokens_from(0, 10) for port, feed in feeds.items()}
            assert all(
                got is not None and got.tokens == ["a", "b", "c"] for got in tokens_got.values()
            )
            # Sharded: no message crossed the cluster bus (a PUBLISH goes to every node).
            assert {node.port: bus_messages(node, "publish") for node in cluster.nodes} == publishes
            await client.publish(feeds[cluster.nodes[0].port].channel, tokens(3, "d"))
            assert bus_messages(cluster.nodes[0], "publish") > publishes[cluster.nodes[0].port]
        # Nobody holds the feeds any more: once they lingered out, no subscription is left.
        await until(lambda: hub.feeds == 0 and not subscriber.nodes, 10)
        for node in cluster.nodes:
            for job in jobs.values():
                assert shard_subscribers(node, KEYS.channel(job)) == 0


async def test_a_moved_slot_is_subscribed_again_on_its_new_master_with_a_new_epoch(
    cluster: LocalCluster,
) -> None:
    job = jobs_on_every_master(cluster)[cluster.nodes[0].port]
    source, target = cluster.nodes[0], cluster.nodes[1]
    async with (
        hub_on(cluster) as (hub, subscriber),
        cluster_client(cluster) as client,
        hub.join(job) as feed,
    ):
        await heard(feed, client, 0, "a")
        epoch = feed.epoch
        slot = client.keyslot(feed.channel)
        try:
            cluster.move_slot(slot, target)
            # The server unsubscribes the hub from the channel (its slot left the node); the hub
            # asks the cluster where it went and subscribes there: a new epoch, buffer emptied.
            await until(lambda: feed.epoch > epoch and feed.confirmed.is_set(), 10)
            assert subscriber.node_of(feed.channel) == target.name
            assert feed.next_offset is None
            assert shard_subscribers(target, feed.channel) == 1
            assert shard_subscribers(source, feed.channel) == 0
            await heard(feed, client, 1, "b")
        finally:
            cluster.move_slot(slot, source)
        await until(lambda: subscriber.node_of(feed.channel) == source.name, 10)
        await heard(feed, client, 2, "c")


async def test_a_refused_subscribe_follows_moved_to_the_slot_s_master(
    cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A slot cache gone stale (the slot moved while nobody listened): SSUBSCRIBE answers MOVED,
    and the hub subscribes on the master the cluster names."""
    caplog.set_level(logging.INFO, logger="reviewstream.hub")
    job = jobs_on_every_master(cluster)[cluster.nodes[0].port]
    source, target = cluster.nodes[0], cluster.nodes[1]
    async with hub_on(cluster) as (hub, subscriber), cluster_client(cluster) as client:
        async with hub.join(job):
            pass  # the hub's slot cache is filled
        await until(lambda: hub.feeds == 0 and not subscriber.nodes, 10)  # lingered out
        slot = client.keyslot(KEYS.channel(job))
        cluster.move_slot(slot, target)
        try:
            async with hub.join(job) as feed:
                assert feed.confirmed.is_set()
                assert subscriber.node_of(feed.channel) == target.name
                await heard(feed, client, 0, "a")
            assert any("MovedError" in record.getMessage() for record in caplog.records)
        finally:
            cluster.move_slot(slot, source)


async def test_a_killed_master_loses_only_its_channels_and_they_come_back_with_it(
    cluster: LocalCluster,
) -> None:
    jobs = jobs_on_every_master(cluster)
    victim, *others = cluster.nodes
    async with hub_on(cluster) as (hub, subscriber), cluster_client(cluster) as client:
        async with contextlib.AsyncExitStack() as stack:
            feeds = {
                port: await stack.enter_async_context(hub.join(job)) for port, job in jobs.items()
            }
            for offset, feed in enumerate(feeds.values()):
                await heard(feed, client, offset, "x")
            epochs = {port: feed.epoch for port, feed in feeds.items()}
            lost = feeds[victim.port]
            victim.kill()
            # Its feed stops trusting its buffer at once; the others go on as if nothing happened.
            await until(lambda: not lost.confirmed.is_set(), 5)
            assert lost.next_offset is None
            for node in others:
                feed = feeds[node.port]
                await heard(feed, client, feed.next_offset or 0, "y")
                assert feed.confirmed.is_set() and feed.epoch == epochs[node.port]
            assert victim.name not in subscriber.nodes
            victim.start()  # the same node (its nodes.conf): the same slots
            await until(lambda: lost.confirmed.is_set(), 15)
            assert lost.epoch == epochs[victim.port] + 1
            assert subscriber.node_of(lost.channel) == victim.name
            await until(lambda: cluster.node_of(lost.channel).port == victim.port, 15)
            await heard(lost, client, 5, "z")
            for port in (node.port for node in others):
                assert feeds[port].epoch == epochs[port]


async def test_the_runtime_opens_a_cluster_client_and_a_sharded_hub(cluster: LocalCluster) -> None:
    settings = Settings(_env_file=None, redis_url=cluster.url, redis_cluster=True)  # type: ignore[call-arg]
    async with open_runtime(settings, worker=False) as runtime:
        assert isinstance(runtime.redis, RedisCluster)
        assert isinstance(runtime.hub._subscriber, ShardedSubscriber)
        assert runtime.store.redis is cast(object, runtime.redis)
        jobs = list(jobs_on_every_master(cluster).values())
        async with runtime.hub.join(jobs[0]) as feed:
            await heard(feed, runtime.redis, 0, "a")
        # The hub's check of quiet jobs: one pipeline, split per node by the cluster client.
        assert await runtime.store.jobs.progress(jobs) == [(None, 0)] * 3


def test_a_cluster_needs_a_url() -> None:
    with pytest.raises(ValueError, match="REVIEWSTREAM_REDIS_URL"):
        Settings(_env_file=None, redis_cluster=True)  # type: ignore[call-arg]
