"""``PlainSubscriber``: the hub's one pub/sub connection to a single Redis, a ``SUBSCRIBE`` per
job channel.

A placeholder channel keeps the connection in pub/sub mode and proves it works. When the
connection breaks, every channel is lost; the subscriber reconnects (with the shared backoff)
and subscribes them all again. redis-py may also reconnect and resubscribe on its own: the hub
sees only the new confirmations, each a new epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .base import BACKOFF_FIRST, BACKOFF_MAX, POLL_SECONDS, Listener, as_text

log = logging.getLogger(__name__)


class PlainSubscriber:
    """One pub/sub connection to a single Redis, ``SUBSCRIBE`` per channel (module docstring)."""

    def __init__(self, redis: aioredis.Redis, placeholder: str, listener: Listener) -> None:
        self._redis = redis
        self._placeholder = placeholder
        self._listener = listener
        self._channels: dict[str, None] = {}  # every channel wanted, in the order asked for
        self._sent: set[str] = set()  # every channel named on this connection
        self._pubsub: Any = None
        self.connected = asyncio.Event()
        self.lock = asyncio.Lock()  # one (UN)SUBSCRIBE at a time on the connection

    async def run(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            try:
                await self._connect()
                backoff = BACKOFF_FIRST
                await self._listen()
            except (RedisError, OSError) as e:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from e
                log.warning("hub lost its Redis subscription (%s); reconnecting", e)
            self.connected.clear()
            # Lost too: those given up with their confirmation outstanding (never coming now).
            self._listener.lost(self._sent | self._channels.keys())
            await self._close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def subscribe(self, channel: str) -> None:
        self._channels[channel] = None
        if self.connected.is_set():
            await self._send("subscribe", channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.pop(channel, None)
        if self.connected.is_set():
            await self._send("unsubscribe", channel)

    async def aclose(self) -> None:
        await self._close()

    async def _send(self, command: str, channel: str) -> None:
        self._sent.add(channel)
        try:
            async with self.lock:
                await getattr(self._pubsub, command)(channel)
        except RedisError as e:  # the reader hears of a broken connection too
            log.warning("%s %s failed: %s", command, channel, e)

    async def _connect(self) -> None:
        self._sent.clear()
        self._pubsub = self._redis.pubsub()
        await self._pubsub.subscribe(self._placeholder)
        self.connected.set()
        for channel in list(self._channels):  # taken at once: later ones are sent by subscribe()
            await self._send("subscribe", channel)

    async def _listen(self) -> None:
        """Read what the connection brings until it breaks.

        Straight from the connection, not through ``PubSub.get_message``: that wraps every
        message in a retry, a timeout and a dict, which cost more than the message. The
        health check it would run between messages runs beside instead (``_keep_alive``).
        """
        conn, listener = self._pubsub.connection, self._listener
        keep_alive = asyncio.create_task(self._keep_alive(), name="reviewstream-hub-keepalive")
        try:
            while True:
                # Blocks with no timeout (redis-py's math.inf), as PubSub.get_message(None).
                reply = await conn.read_response(
                    timeout=math.inf, disconnect_on_error=False, push_request=True
                )
                kind = as_text(reply[0])
                if kind == "message":
                    listener.received(as_text(reply[1]), reply[2])
                elif kind == "subscribe":
                    listener.subscribed(as_text(reply[1]))
        finally:
            keep_alive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keep_alive

    async def _keep_alive(self) -> None:
        """A PING whenever the connection was quiet for its health check interval: a broken
        connection fails the PING's write, and the reply (a ``pong``) is read and ignored."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                async with self.lock:
                    await self._pubsub.check_health()
            except (RedisError, OSError):
                return  # the reader hears of it too

    async def _close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self.connected.clear()
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
