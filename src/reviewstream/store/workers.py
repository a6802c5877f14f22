"""WorkerRegistry: the keys every process of a deployment shares outside any job, shard or
tenant — the workers' heartbeats, and the stream-token secret."""

from __future__ import annotations

import secrets

import redis.asyncio as aioredis

from ..keys import Keys
from .boundary import Script, redis_errors
from .scripts import workers as scripts


class WorkerRegistry:
    """Which workers are alive (a sorted set of heartbeats on the Redis clock, which the API's
    readiness and admission read), and the secret every process signs stream tokens with."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._heartbeat = Script(redis, scripts.HEARTBEAT)
        self._workers_alive = Script(redis, scripts.WORKERS_ALIVE)

    async def heartbeat(self, worker: str, forget_after_ms: int) -> float:
        """Announce ``worker`` alive now (Redis clock); forget workers silent for longer.
        Returns the Redis time of the heartbeat (seconds since the epoch)."""
        with redis_errors("worker heartbeat"):
            now = await self._heartbeat(keys=[self.keys.workers], args=[worker, forget_after_ms])
        return float(now)

    async def forget_worker(self, worker: str) -> None:
        with redis_errors("worker sign-off"):
            await self.redis.zrem(self.keys.workers, worker)

    async def workers_alive(self, window_ms: int) -> int:
        """How many workers announced themselves within ``window_ms``."""
        with redis_errors("count live workers"):
            return int(await self._workers_alive(keys=[self.keys.workers], args=[window_ms]))

    async def shared_secret(self) -> bytes:
        """A random secret shared by every process on this Redis, made by the first to ask."""
        with redis_errors("read the token secret"):
            await self.redis.set(self.keys.token_secret, secrets.token_hex(32), nx=True)
            value = await self.redis.get(self.keys.token_secret)
        return str(value).encode()
