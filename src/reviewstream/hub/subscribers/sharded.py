"""``ShardedSubscriber``: the hub on a Redis Cluster (Redis >= 7), ``SSUBSCRIBE`` per job channel
on the master that serves its slot, so a message travels only within that shard.

One connection per node it needs, each read by a task of its own, closed when it holds no
channel any more. A node's connection that breaks loses that node's channels only; a
``SSUBSCRIBE`` refused (``MOVED`` after a resharding or failover, ``CLUSTERDOWN``) or a
``sunsubscribe`` the server sends by itself (the slot left the node) loses that channel. Lost
channels are placed again after a topology refresh, on whatever node serves their slot then,
retried with the shared backoff while their node is away. redis-py never reconnects these
connections by itself: a multi-slot resubscription would be refused (``CROSSSLOT``), and a
silent one would hide a loss.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from .base import BACKOFF_FIRST, BACKOFF_MAX, POLL_SECONDS, Listener, as_text

log = logging.getLogger(__name__)


class _Unreachable(RedisClusterException):
    """The channel's node could not be reached in this round already."""


class _Shard:
    """One node's sharded pub/sub connection: the channels sent there and the replies awaited."""

    def __init__(self, name: str, client: aioredis.Redis, pubsub: Any) -> None:
        self.name = name
        self.client = client
        self.pubsub: PubSub = pubsub
        self.channels: set[str] = set()  # SSUBSCRIBEd here (confirmed or not yet)
        # Commands sent and not yet answered, in order: each names one channel, so a refusal
        # (an error reply) belongs to the oldest, and a sunsubscribe nobody asked for is the
        # server's (the slot left this node).
        self.awaiting: collections.deque[tuple[str, str]] = collections.deque()
        self.lock = asyncio.Lock()
        self.reader: asyncio.Task[None] | None = None
        self.dropped = False

    @property
    def usable(self) -> bool:
        connection = self.pubsub.connection
        return not self.dropped and connection is not None and connection.is_connected

    async def aclose(self) -> None:
        pubsub: Any = self.pubsub
        with contextlib.suppress(RedisError, OSError):
            await pubsub.aclose()
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()


class ShardedSubscriber:
    """``SSUBSCRIBE`` on the node of each channel's slot, one connection per node (module
    docstring). ``run`` places the channels that wait to be (re)subscribed."""

    def __init__(self, cluster: RedisCluster, listener: Listener) -> None:
        self._cluster = cluster
        self._listener = listener
        # Every channel wanted, and the node connection it was sent to (None: to be placed).
        self._channels: dict[str, _Shard | None] = {}
        self._shards: dict[str, _Shard] = {}
        self._unplaced = asyncio.Event()  # some channel waits to be placed
        self._refresh = True  # ask the cluster who serves what before placing
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def nodes(self) -> list[str]:
        """The nodes (``host:port``) this process holds a sharded subscription on."""
        return list(self._shards)

    def node_of(self, channel: str) -> str | None:
        shard = self._channels.get(channel)
        return shard.name if shard is not None else None

    async def run(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            await self._unplaced.wait()
            self._unplaced.clear()
            if self._refresh:
                self._refresh = False
                try:
                    # The client's own start first (else its aclose() would leave the nodes'
                    # connections open), then a fresh read of who serves which slots.
                    await self._cluster.initialize()
                    await self._cluster.nodes_manager.initialize()
                except (RedisError, RedisClusterException, OSError) as e:  # no node answers
                    log.warning("reading the cluster's slots failed (%s); retrying", e)
                    self._refresh = True
            waiting = [channel for channel, shard in self._channels.items() if shard is None]
            unreachable: set[str] = set()  # one failed connection per node and round
            placed = [await self._place(channel, unreachable) for channel in waiting]
            if self._refresh or not all(placed):
                self._unplaced.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            else:
                backoff = BACKOFF_FIRST

    async def subscribe(self, channel: str) -> None:
        if channel in self._channels:
            return
        self._channels[channel] = None
        if self._refresh or not await self._place(channel, set()):
            self._unplaced.set()  # run() places it, after reading the cluster's slots if due

    async def unsubscribe(self, channel: str) -> None:
        shard = self._channels.pop(channel, None)
        if shard is not None and shard.usable:
            await self._send(shard, "sunsubscribe", channel)

    async def aclose(self) -> None:
        for shard in list(self._shards.values()):
            self._drop(shard)
        tasks = [*self._closing]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._channels.clear()

    # -- placing a channel on the node of its slot --------------------------------------------

    async def _place(self, channel: str, unreachable: set[str]) -> bool:
        """SSUBSCRIBE ``channel`` on its node; False when that cannot be done now (its node is
        added to ``unreachable`` if connecting failed, and not tried again with that set)."""
        try:
            shard = await self._shard_for(channel, unreachable)
        except _Unreachable:
            return False
        except (RedisError, RedisClusterException, OSError) as e:
            log.warning("cannot subscribe to %s now (%s); retrying", channel, e)
            self._refresh = True
            return False
        if self._channels.get(channel, shard) is not None:
            return True  # unsubscribed, or placed by another caller, meanwhile
        self._channels[channel] = shard
        return await self._send(shard, "ssubscribe", channel)

    async def _shard_for(self, channel: str, unreachable: set[str]) -> _Shard:
        node = self._cluster.get_node_from_key(channel)  # the slot cache; SlotNotCoveredError
        if node is None:
            raise RedisClusterException(f"no node serves {channel}")
        shard = self._shards.get(node.name)
        if shard is not None and not shard.dropped:
            return shard
        if node.name in unreachable:
            raise _Unreachable(node.name)
        # No retries inside redis-py: a reconnection would resubscribe every channel in one
        # SSUBSCRIBE (CROSSSLOT), and a silent one would hide the loss from the hub.
        kwargs = dict(node.connection_kwargs)
        kwargs["retry"] = Retry(NoBackoff(), 0, supported_errors=())
        pool = aioredis.ConnectionPool(
            connection_class=node.connection_class, max_connections=1, **kwargs
        )
        client = aioredis.Redis.from_pool(pool)
        pubsub: Any = client.pubsub()  # redis-py's PubSub is untyped
        try:
            await pubsub.connect()
        except BaseException:
            unreachable.add(node.name)
            await _Shard(node.name, client, pubsub).aclose()
            raise
        shard = self._shards.get(node.name)  # another caller connected meanwhile: use theirs
        if shard is not None and not shard.dropped:
            await _Shard(node.name, client, pubsub).aclose()
            return shard
        shard = self._shards[node.name] = _Shard(node.name, client, pubsub)
        shard.reader = asyncio.create_task(self._read(shard), name=f"reviewstream-hub-{node.name}")
        return shard

    async def _send(self, shard: _Shard, command: str, channel: str) -> bool:
        """Send one (S)(UN)SUBSCRIBE on ``shard``; on failure the shard is dropped."""
        # Bookkeeping before any await: the reader must see the reply awaited.
        if command == "ssubscribe":
            shard.channels.add(channel)
        shard.awaiting.append((command, channel))
        try:
            async with shard.lock:
                if not shard.usable:
                    raise ConnectionError(f"{shard.name}: connection gone")
                await getattr(shard.pubsub, command)(channel)
        except (RedisError, OSError) as e:
            log.warning("%s %s on %s failed: %s", command, channel, shard.name, e)
            self._drop(shard)
            return False
        return True

    # -- reading one node ---------------------------------------------------------------------

    async def _read(self, shard: _Shard) -> None:
        listener = self._listener
        try:
            while shard.usable:
                try:
                    message = await shard.pubsub.get_message(timeout=POLL_SECONDS)
                except ResponseError as e:  # a refused SSUBSCRIBE: MOVED, CLUSTERDOWN, ...
                    self._refused(shard, e)
                    continue
                if message is None:
                    continue
                kind, channel = message["type"], as_text(message["channel"])
                if kind == "smessage":
                    listener.received(channel, message["data"])
                elif kind == "ssubscribe":
                    self._answered(shard, kind, channel)
                    if self._channels.get(channel) is shard:
                        listener.subscribed(channel)
                elif kind == "sunsubscribe":
                    if not self._answered(shard, kind, channel):
                        self._moved_away(shard, channel)
                    elif channel not in self._channels or self._channels[channel] is not shard:
                        shard.channels.discard(channel)
                    if not shard.channels and not shard.awaiting:
                        self._drop(shard)  # nothing left to hear here
        except (RedisError, OSError) as e:
            if not shard.dropped:
                log.warning("hub lost its sharded subscription on %s (%s)", shard.name, e)
        finally:
            self._drop(shard)

    def _answered(self, shard: _Shard, kind: str, channel: str) -> bool:
        """Take the reply off what ``shard`` awaits; False if nobody asked for it."""
        if shard.awaiting and shard.awaiting[0] == (kind, channel):
            shard.awaiting.popleft()
            return True
        return False

    def _refused(self, shard: _Shard, error: ResponseError) -> None:
        if not shard.awaiting:
            log.warning("%s answered an error nobody asked for: %s", shard.name, error)
            return
        command, channel = shard.awaiting.popleft()
        log.info("%s %s refused by %s (%r): placing it again", command, channel, shard.name, error)
        if command == "ssubscribe":
            shard.channels.discard(channel)
            self._listener.lost([channel])  # no confirmation is coming for it
            if self._channels.get(channel) is shard:
                self._channels[channel] = None
                self._refresh = True
                self._unplaced.set()

    def _moved_away(self, shard: _Shard, channel: str) -> None:
        """The server unsubscribed ``channel`` by itself: its slot is served elsewhere now."""
        shard.channels.discard(channel)
        self._listener.lost([channel])
        if self._channels.get(channel) is shard:
            log.info("%s left %s (slot moved): subscribing where it went", channel, shard.name)
            self._channels[channel] = None
            self._refresh = True
            self._unplaced.set()

    def _drop(self, shard: _Shard) -> None:
        """Forget ``shard``; its channels are lost and placed again (if still wanted)."""
        if shard.dropped:
            return
        shard.dropped = True
        if self._shards.get(shard.name) is shard:
            del self._shards[shard.name]
        wanted = [channel for channel, held in self._channels.items() if held is shard]
        for channel in wanted:
            self._channels[channel] = None
        # Lost too: those given up with their confirmation outstanding (never coming now).
        lost = {*wanted, *shard.channels, *(channel for _, channel in shard.awaiting)}
        if lost:
            self._listener.lost(lost)
        if wanted:
            self._refresh = True
            self._unplaced.set()
        closing = asyncio.create_task(
            self._close(shard), name=f"reviewstream-hub-close-{shard.name}"
        )
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _close(self, shard: _Shard) -> None:
        reader = shard.reader
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            await asyncio.wait([reader], timeout=2.0)
        await shard.aclose()
