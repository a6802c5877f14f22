"""``web/lanes.py``: which requests the lane leaves to the app's stack, and which handler answers
a domain error on it. What the lane answers itself is held to the stack's answers, byte for
byte, by the differential tests of test_long_poll.py and test_sse.py (plain requests take the
lane, the same requests made unusual take the stack)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from reviewstream.errors import JobNotFound, ReviewstreamError, StoreError
from reviewstream.web.lanes import Lanes, handler_for

JOB = "/jobs/0123456789abcdef/"


class Stack:
    """Stands for the layers below the lane: records what reaches them."""

    def __init__(self) -> None:
        self.reached: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.reached.append(scope["path"])


def request(path: str, query: bytes = b"", **extra: Any) -> Scope:
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "root_path": "",
        "query_string": query,
        "headers": [],
        "state": {},
        **extra,
    }


async def nothing() -> Message:
    raise AssertionError("the lane read the request body")


async def sent(message: Message) -> None:
    raise AssertionError("the lane answered a request it should have left to the stack")


@pytest.mark.parametrize(
    "scope",
    [
        request(JOB + "long-poll", b"offset=%31"),  # an escape: FastAPI's to read
        request(JOB + "long-poll", b"offset=1", **{"fastapi.telemetry": object()}),  # observed
        request(JOB + "events", b"offset=1&offset=2"),  # repeated: FastAPI's to read
        request(JOB + "events", method="POST"),
        request("/jobs", method="POST"),
        request("/healthz"),
        {**request(JOB + "ws", **{"fastapi.telemetry": object()}), "type": "websocket"},
        {**request("/elsewhere/ws"), "type": "websocket"},
    ],
    ids=[
        "escaped",
        "observed",
        "repeated",
        "post-events",
        "create",
        "health",
        "ws-observed",
        "ws-other",
    ],
)
async def test_what_is_not_plain_goes_down_the_stack(scope: Scope) -> None:
    stack = Stack()
    await Lanes(stack, {})(scope, nothing, sent)
    assert stack.reached == [scope["path"]]


def test_a_domain_error_gets_the_handler_exception_middleware_would_pick() -> None:
    async def found(request: Any, exc: Any) -> Any: ...
    async def domain(request: Any, exc: Any) -> Any: ...
    async def anything(request: Any, exc: Any) -> Any: ...

    handlers = {JobNotFound: found, ReviewstreamError: domain, Exception: anything}
    assert handler_for(handlers, JobNotFound("x")) is found
    assert handler_for(handlers, StoreError("x")) is domain  # by its bases, nearest first
    assert handler_for(handlers, ValueError("x")) is None  # the 500 answer's, further out
