"""``LazyTimeout``: ``asyncio.timeout`` around each of a stream's waits, with one timer per
stream instead of one per wait.

A stream that waits once per token (a provider's read, a reader's next event) would spend more
on arming and cancelling a timer per wait than on the token. Here the timer stays armed across
waits and is moved only when it fires early (the wait it was armed for ended, a later one is
under way). ``start(limit)`` before each wait, in the task that waits; ``waiting = False``
after it; when a wait lasts ``limit``, the task is cancelled, and ``expired()``, in the
``except asyncio.CancelledError``, tells that cancellation from any other. ``close()`` when
the stream ends.
"""

from __future__ import annotations

import asyncio


class LazyTimeout:
    """One stream's timeout across its waits (module docstring)."""

    __slots__ = ("_cancelling", "_fired", "_handle", "_loop", "_task", "limit", "since", "waiting")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False
        self.limit = 0.0
        self.since = 0.0
        self.waiting = False

    def start(self, limit: float) -> None:
        """A wait begins, in the current task; it may last ``limit`` seconds."""
        task = self._task = asyncio.current_task()
        assert task is not None
        self._cancelling = task.cancelling()
        self.limit = limit
        self.since = now = self._loop.time()
        self.waiting = True
        due = now + limit
        handle = self._handle
        if handle is not None and handle.when() > due:  # a shorter limit than the timer's
            handle.cancel()
            handle = None
        if handle is None:
            self._handle = self._loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._handle = None
        if not self.waiting:
            return  # the next wait arms it again
        due = self.since + self.limit
        if self._loop.time() < due:
            self._handle = self._loop.call_at(due, self._fire)
            return
        self._fired = True
        assert self._task is not None
        self._task.cancel()

    def expired(self) -> bool:
        """Whether the cancellation being handled is this timeout's (and not also another's)."""
        if not self._fired:
            return False
        self._fired = False
        assert self._task is not None
        return self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
