"""Lean followers for each delivery mode, written against the wire contract with standard client
libraries (httpx, httpx-sse, websockets), not the project's own client code."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets
from httpx_sse import aconnect_sse

from reviewstream.wire import MODES, Mode

# The modes that wait for tokens to exist: all but the short poll.
LIVE_MODES: tuple[Mode, ...] = tuple(m for m in MODES if m != "short_poll")


@dataclass
class Result:
    """What one follower saw: its tokens, the end messages (exactly one expected)."""

    tokens: list[str] = field(default_factory=list)
    ends: list[dict[str, Any]] = field(default_factory=list)
    notices: list[dict[str, Any]] = field(default_factory=list)  # SSE/WebSocket status notices
    last_id: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def offset(self) -> int:
        return len(self.tokens)


async def _poll(
    c: httpx.AsyncClient, path: str, params: dict[str, Any], offset: int, pause: float,
    stop_after: int | None, result: Result | None,
) -> Result:  # fmt: skip
    """Poll ``path`` from ``offset`` until the job is done (or ``stop_after`` tokens)."""
    result = result or Result()
    while True:
        r = await c.get(path, params={**params, "offset": offset})
        r.raise_for_status()
        page = r.json()
        assert page["offset"] == offset
        result.tokens += page["tokens"]
        offset = page["next_offset"]
        if page["done"]:
            result.ends.append(page)
            return result
        if stop_after is not None and len(result.tokens) >= stop_after:
            return result
        if pause:
            await asyncio.sleep(pause)


async def short_poll(
    c: httpx.AsyncClient, job_id: str, offset: int = 0, *, interval: float = 0.02,
    stop_after: int | None = None, result: Result | None = None,
) -> Result:  # fmt: skip
    return await _poll(c, f"/jobs/{job_id}", {}, offset, interval, stop_after, result)


async def long_poll(
    c: httpx.AsyncClient, job_id: str, offset: int = 0, *, stop_after: int | None = None,
    result: Result | None = None,
) -> Result:  # fmt: skip
    path = f"/jobs/{job_id}/long-poll"
    return await _poll(c, path, {"timeout": 10}, offset, 0.0, stop_after, result)


async def sse(
    c: httpx.AsyncClient, job_id: str, offset: int | None = None, *,
    last_event_id: str | None = None, stop_after: int | None = None,
    result: Result | None = None,
) -> Result:  # fmt: skip
    """Follows the SSE stream; stops after ``stop_after`` tokens (a client disconnect)."""
    result = result or Result()
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    params = {"offset": offset} if offset is not None else {}
    async with aconnect_sse(
        c, "GET", f"/jobs/{job_id}/events", params=params, headers=headers
    ) as source:
        source.response.raise_for_status()
        async for event in source.aiter_sse():
            if event.event == "token":
                data = json.loads(event.data)
                result.tokens += data["tokens"]
                result.last_id = event.id
                assert int(event.id) == data["offset"] + len(data["tokens"])
                if stop_after is not None and len(result.tokens) >= stop_after:
                    return result
            elif event.event == "end":
                result.ends.append(json.loads(event.data))
                return result
            elif event.event == "status":
                result.notices.append(json.loads(event.data))
            elif event.event == "error":
                raise AssertionError(f"SSE error event: {event.data}")
    return result


async def websocket(
    base: str, job_id: str, offset: int | None = None, *, stop_after: int | None = None,
    result: Result | None = None,
) -> Result:  # fmt: skip
    result = result or Result()
    url = base.replace("http://", "ws://") + f"/jobs/{job_id}/ws"
    if offset is not None:
        url += f"?offset={offset}"
    async with websockets.connect(url, max_size=2**22) as ws:
        async for raw in ws:
            message = json.loads(raw)
            if message["type"] == "tokens":
                assert message["next_offset"] == message["offset"] + len(message["tokens"])
                result.tokens += message["tokens"]
                if stop_after is not None and len(result.tokens) >= stop_after:
                    return result
            elif message["type"] == "end":
                result.ends.append(message)
                return result
            elif message["type"] == "status":
                result.notices.append(message)
    return result


async def follow(
    mode: str, c: httpx.AsyncClient, base: str, job_id: str, offset: int = 0,
    stop_after: int | None = None, result: Result | None = None,
) -> Result:  # fmt: skip
    """Follow ``job_id`` from ``offset`` in ``mode``, appending to ``result``."""
    result = result or Result()
    if mode == "short_poll":
        return await short_poll(c, job_id, offset, stop_after=stop_after, result=result)
    if mode == "long_poll":
        return await long_poll(c, job_id, offset, stop_after=stop_after, result=result)
    if mode == "sse":
        return await sse(c, job_id, offset, stop_after=stop_after, result=result)
    if mode == "websocket":
        return await websocket(base, job_id, offset, stop_after=stop_after, result=result)
    raise ValueError(mode)


async def resuming(
    mode: str, c: httpx.AsyncClient, base: str, job_id: str, rng: random.Random
) -> tuple[Result, int]:
    """Follow ``job_id`` to its end in ``mode``, dropping the connection after 1-10 tokens each
    time and resuming from what was received (SSE as browsers do, by Last-Event-ID); returns the
    result and how many times it disconnected."""
    result = Result()
    disconnects = 0
    while not result.ends:
        stop_after = len(result.tokens) + rng.randint(1, 10)
        before = len(result.tokens)
        if mode == "sse" and result.last_id is not None:
            await sse(c, job_id, last_event_id=result.last_id, stop_after=stop_after,
                      result=result)  # fmt: skip
        else:
            await follow(mode, c, base, job_id, len(result.tokens), stop_after, result)
        if not result.ends:
            disconnects += 1
            assert len(result.tokens) >= before
    return result, disconnects
