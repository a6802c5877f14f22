"""What the app's layers cost a long poll, in process: the app against its long-poll route alone.

Builds the app (``create_app``; nothing started, no Redis), replaces the long poll's answer with
a fixed 100-byte one (``long_poll.answer``, which the lane and ``PlainLongPoll`` both call),
and calls, 20,000 times each and 5 rounds, (a) the route's own ``matches`` and ``handle`` and
(b) the whole app, with the scope of a plain long poll and a ``send`` that drops messages. The
difference is what the layers between uvicorn and the route cost per request: FastAPI's and
Starlette's ``__call__`` (telemetry check), the middlewares, the lane or the routers.

    python benchmarks/request_layers.py
    PYTHONPATH=/tmp/before/src python benchmarks/request_layers.py   # another tree

An older tree without ``long_poll.answer`` gets the same fixed answer through its route.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from reviewstream.settings import Settings
from reviewstream.web import create_app
from reviewstream.web.routes import long_poll

BODY = b'{"id":"x","status":"running","offset":5,"next_offset":6,"tokens":["hi"],"done":false}'
PATH = "/jobs/0123456789abcdef0123456789abcdef/long-poll"
CALLS = 20_000


async def fixed_answer(got: Any, scope: Scope, send: Send) -> None:
    headers = [*long_poll._HEAD, (b"content-length", b"%d" % len(BODY)), long_poll._JSON]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


class FixedRoute(long_poll.PlainLongPoll):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await fixed_answer(None, scope, send)


def scope() -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"offset=5",
        "root_path": "",
        "headers": [(b"host", b"x")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def dropped(message: Message) -> None:
    pass


async def main() -> None:
    app = create_app(Settings(_env_file=None, redis_url="redis://127.0.0.1:1"), run_worker=False)  # type: ignore[call-arg]
    routes = app.router.routes
    routes[:] = [FixedRoute() if isinstance(r, long_poll.PlainLongPoll) else r for r in routes]
    if hasattr(long_poll, "answer"):
        long_poll.answer = fixed_answer
    route = FixedRoute()

    async def route_alone(s: Scope, r: Receive, send: Send) -> None:
        _, child = route.matches(s)
        s.update(child)
        await route.handle(s, r, send)

    for name, target in (("the route alone", route_alone), ("the whole app", app)):
        rounds = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(CALLS):
                await target(scope(), receive, dropped)
            rounds.append((time.perf_counter() - started) / CALLS * 1e6)
        print(f"{name}: {statistics.median(rounds):.1f} µs per request (min {min(rounds):.1f})")


if __name__ == "__main__":
    asyncio.run(main())
