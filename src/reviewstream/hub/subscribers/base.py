"""What every subscriber of the hub shares: the two protocols, the backoff, the read timeout.

A subscriber tells the hub (a ``Listener``) three things: a channel's subscription was
confirmed (the first time or again, after a loss: either way a new epoch for its feed), a
message arrived on a channel, and channels were lost (their feeds must stop trusting their
buffers until confirmed again). Each subscriber resubscribes what it lost by itself, waiting
``BACKOFF_FIRST`` after a failure and doubling the wait up to ``BACKOFF_MAX``.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol

BACKOFF_FIRST, BACKOFF_MAX = 0.05, 2.0  # between attempts to get a lost subscription back
POLL_SECONDS = 1.0  # a reader's wait per read: redis-py's health checks run between reads


class Listener(Protocol):
    """What the hub hears from its subscriber."""

    def subscribed(self, channel: str) -> None: ...

    def received(self, channel: str, data: Any) -> None: ...

    def lost(self, channels: Collection[str]) -> None: ...


class Subscriber(Protocol):
    """The hub's pub/sub connection(s): ``run`` reads until cancelled and gets back what breaks."""

    async def run(self) -> None: ...

    async def subscribe(self, channel: str) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...

    async def aclose(self) -> None: ...


def as_text(value: Any) -> str:
    """A channel name as redis-py hands it over (bytes unless the client decodes)."""
    return value.decode() if isinstance(value, bytes) else str(value)
