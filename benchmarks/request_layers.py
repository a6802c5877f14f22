"""What the app's layers cost a long poll, in process: the whole app against the route's own work.

Builds the app (``create_app``; nothing started, no Redis) with the long-poll route's endpoint
replaced by one that answers a fixed 100-byte body, and calls, 20,000 times each and 5 rounds,
(a) ``Delivery`` holding that route alone (the caller, the parameters, the endpoint: the route's
own work) and (b) the whole app, with the scope of a long poll and a ``send`` that drops
messages. The difference is what the layers between uvicorn and the route cost per request:
FastAPI's and Starlette's ``__call__``, the error middleware, the connection cap.

    python benchmarks/request_layers.py
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from types import SimpleNamespace
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reviewstream.settings import Settings
from reviewstream.tenancy import Gatekeeper, StreamTokens
from reviewstream.web import app as web_app
from reviewstream.web.delivery import Delivery
from reviewstream.web.deps import JsonAnswer
from reviewstream.web.routes import long_poll

BODY = b'{"id":"x","status":"running","offset":5,"next_offset":6,"tokens":["hi"],"done":false}'
PATH = "/jobs/0123456789abcdef0123456789abcdef/long-poll"
CALLS = 20_000


async def fixed(service: Any, params: Any, caller: Any) -> JsonAnswer:
    return JsonAnswer(BODY)


FIXED = dataclasses.replace(long_poll.ROUTE, endpoint=fixed)
SERVICE = SimpleNamespace(gate=Gatekeeper(None, StreamTokens(b"secret", 60)))


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
        "state": {"service": SERVICE},
    }


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def dropped(message: Message) -> None:
    pass


async def nowhere(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("the long poll went past Delivery")


async def main() -> None:
    web_app.DELIVERY = tuple(FIXED if r.name == FIXED.name else r for r in web_app.DELIVERY)
    settings = Settings(_env_file=None, redis_url="redis://127.0.0.1:1")  # type: ignore[call-arg]
    app = web_app.create_app(settings, run_worker=False)
    targets: list[tuple[str, ASGIApp]] = [
        ("the route alone", Delivery(nowhere, [FIXED])),
        ("the whole app", app),
    ]
    for name, target in targets:
        rounds = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(CALLS):
                await target(scope(), receive, dropped)
            rounds.append((time.perf_counter() - started) / CALLS * 1e6)
        print(f"{name}: {statistics.median(rounds):.1f} µs per request (min {min(rounds):.1f})")


if __name__ == "__main__":
    asyncio.run(main())
