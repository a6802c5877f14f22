"""alongside(): a watcher task beside the current one, whichever ends first ends the other."""

from __future__ import annotations

import asyncio

import pytest

from reviewstream.web.alongside import alongside


class Boom(Exception):
    pass


async def forever(log: list[str]) -> None:
    try:
        await asyncio.sleep(3600)
    finally:
        log.append("watcher stopped")


async def test_the_block_ending_stops_the_watcher() -> None:
    log: list[str] = []
    async with alongside(forever(log)):
        await asyncio.sleep(0)
    assert log == ["watcher stopped"]
    await asyncio.sleep(0.01)  # no stray cancellation is left pending on this task


async def test_a_block_done_before_the_watcher_started_leaves_no_warning() -> None:
    log: list[str] = []
    async with alongside(forever(log)):
        pass  # warnings are errors in this suite: "coroutine was never awaited" would fail it
    assert log == []


async def test_a_watcher_that_returns_ends_the_block_quietly() -> None:
    async def leave() -> None:
        await asyncio.sleep(0.01)

    reached = False
    async with alongside(leave()):
        await asyncio.sleep(3600)
        reached = True
    assert not reached
    await asyncio.sleep(0.01)  # still a healthy task


async def test_a_watcher_that_raises_ends_the_block_with_its_error() -> None:
    async def fail() -> None:
        await asyncio.sleep(0.01)
        raise Boom("bad message")

    with pytest.raises(Boom, match="bad message"):
        async with alongside(fail()):
            await asyncio.sleep(3600)


async def test_an_error_in_the_block_stops_the_watcher_and_goes_on_up() -> None:
    log: list[str] = []
    with pytest.raises(Boom):
        async with alongside(forever(log)):
            await asyncio.sleep(0)
            raise Boom
    assert log == ["watcher stopped"]


async def test_cancelling_the_task_from_outside_is_not_swallowed() -> None:
    log: list[str] = []

    async def host() -> None:
        async with alongside(forever(log)):
            await asyncio.sleep(3600)

    task = asyncio.create_task(host())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["watcher stopped"]


async def test_an_outside_cancel_racing_the_watcher_still_cancels() -> None:
    """The watcher returned and someone else cancelled too: the task must end cancelled."""

    async def host(ready: asyncio.Event) -> None:
        async def leave() -> None:
            await ready.wait()

        async with alongside(leave()):
            await asyncio.sleep(3600)

    ready = asyncio.Event()
    task = asyncio.create_task(host(ready))
    await asyncio.sleep(0.01)
    ready.set()
    await asyncio.sleep(0)  # the watcher returns and cancels the host first
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
