"""The scripts on the worker registry (``WorkerRegistry`` runs them), on the Redis clock."""

from __future__ import annotations

from . import NOW

# KEYS: workers. ARGV: worker name, forget_after_ms. A worker's heartbeat; workers silent for
# longer than ``forget_after_ms`` leave the registry. Returns the Redis time (``now``, text), by
# which the worker sets its clock (``workers.clock``).
HEARTBEAT = (
    NOW
    + """
redis.call('ZADD', KEYS[1], now_ms, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - tonumber(ARGV[2]))
return now
"""
)

# KEYS: workers. ARGV: window_ms. How many workers beat within the window.
WORKERS_ALIVE = (
    NOW
    + """
return redis.call('ZCOUNT', KEYS[1], now_ms - tonumber(ARGV[1]), '+inf')
"""
)
