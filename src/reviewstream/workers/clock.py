"""RedisClock: the Redis server's clock, read in-process.

Every time a client sees (a token's ``ts``, a job's start and end) is on Redis' clock, so that
all processes stamp on one clock. A token is stamped by its worker the moment the provider hands
it over, not when its append reaches Redis (a group commit may hold it for a flush): the worker
reads its own clock plus an offset to Redis', measured by each heartbeat, whose script returns
the Redis time it ran at. The offset is taken as if the heartbeat ran halfway through its round
trip, so it is off by at most half that round trip's asymmetry: a measurement whose round trip
was slow (a busy loop, a busy Redis) is not taken unless no better one came for a while.
"""

from __future__ import annotations

import time

# A measurement replaces the one in use when its round trip was at most this much longer than
# the best round trip seen, or when the one in use is this old (seconds): clocks drift.
_SLACK = 0.002
_MAX_AGE = 60.0


class RedisClock:
    """``now()``: seconds since the epoch on the Redis server's clock, read without Redis."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._best_rtt = float("inf")
        self._taken_at = float("-inf")

    def now(self) -> float:
        return time.time() + self.offset

    def measured(self, redis_time: float, sent: float, received: float) -> None:
        """A Redis time read by a round trip sent and answered at these local times."""
        rtt = max(received - sent, 0.0)
        if rtt > 2 * self._best_rtt + _SLACK and received - self._taken_at < _MAX_AGE:
            return
        self._best_rtt = min(self._best_rtt, rtt)
        self.offset = redis_time - (sent + received) / 2
        self._taken_at = received
