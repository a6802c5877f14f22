"""The deadlines of held long polls: one timer per tick for every poll due in it.

A long poll is held until something arrives or its deadline; with a timer per request, arming
and cancelling timers becomes a visible share of the long poll's cost when thousands are held.
Here the polls whose deadlines fall in the same tick share one timer, and a poll costs a set
insertion. A deadline is rounded down to its tick, so a hold never outlasts what the client
asked for (its own read timeout may be the same number). A poll still held at its deadline is
cancelled and raises ``TimeoutError``, as under ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any


class Holds:
    """The held polls of a process, by the tick their deadline falls in."""

    def __init__(self, tick: float = 0.01) -> None:
        self.tick = tick
        self._due: dict[int, set[Hold]] = {}

    def hold(self, seconds: float) -> Hold:
        return Hold(self, seconds)

    def _enter(self, hold: Hold, seconds: float) -> int:
        loop = asyncio.get_running_loop()
        slot = math.floor((loop.time() + seconds) / self.tick)
        due = self._due.get(slot)
        if due is None:
            due = self._due[slot] = set()
            loop.call_at(slot * self.tick, self._expire, slot)
        due.add(hold)
        return slot

    def _leave(self, hold: Hold, slot: int) -> None:
        due = self._due.get(slot)
        if due is not None:
            due.discard(hold)

    def _expire(self, slot: int) -> None:
        for hold in self._due.pop(slot, ()):
            hold.expire()


class Hold:
    """``async with holds.hold(seconds)``: what runs inside is cancelled at the deadline."""

    __slots__ = ("_cancelling", "_holds", "_seconds", "_slot", "_task", "expired")

    def __init__(self, holds: Holds, seconds: float) -> None:
        self._holds = holds
        self._seconds = seconds
        self._slot = 0
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self.expired = False

    async def __aenter__(self) -> Hold:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a hold needs a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._slot = self._holds._enter(self, self._seconds)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: Any
    ) -> None:
        if not self.expired:
            self._holds._leave(self, self._slot)
        elif kind is asyncio.CancelledError and self._task is not None:
            if self._task.uncancel() <= self._cancelling:  # our cancel, nobody else's
                raise TimeoutError from error

    def expire(self) -> None:
        self.expired = True
        if self._task is not None:
            self._task.cancel()
