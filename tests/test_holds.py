"""``holds.py``: held long polls end at their deadline (never after it), sharing a timer per
tick, and a hold cancels only for its own deadline."""

from __future__ import annotations

import asyncio
import time

import pytest

from reviewstream.holds import Holds


async def test_holds_end_at_their_deadline_never_after_it() -> None:
    holds = Holds(tick=0.05)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with holds.hold(0.12):
            await asyncio.sleep(5)
    assert 0.05 < time.monotonic() - started <= 0.12 + 0.05  # rounded down to its tick
    async with holds.hold(0.01):  # what ends in time is not cancelled afterwards
        pass
    await asyncio.sleep(0.1)


async def test_a_hold_leaves_another_cancel_alone() -> None:
    holds = Holds(tick=0.01)

    async def held_forever() -> None:
        async with holds.hold(5):
            await asyncio.sleep(5)

    task = asyncio.create_task(held_forever())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task  # not a TimeoutError: the cancel was not the hold's
