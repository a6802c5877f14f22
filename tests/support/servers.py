"""Real servers on 127.0.0.1 for the tests: a free port, and an app under a real uvicorn (SSE,
long polls and WebSockets are endless streams that ``httpx.ASGITransport`` would buffer)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def serve(app: Any, **config: Any) -> AsyncIterator[str]:
    """Run ``app`` under a real uvicorn on 127.0.0.1; yields its base URL."""
    port = free_port()
    # An idle keep-alive connection outlives httpx's 5 s expiry, so the client retires it: with
    # uvicorn's default, also 5 s, a request sent on a connection just as the server closes it
    # fails (a ReadError) under the tests that hold many connections.
    config.setdefault("timeout_keep_alive", 30)
    cfg = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **config
    )
    # uvicorn's logging config stops its records at the "uvicorn" logger, out of caplog's sight:
    # let them reach the root too, so a test can see the server log "Exception in ASGI
    # application" (still printed on stderr as before).
    logging.getLogger("uvicorn").propagate = True
    server = uvicorn.Server(cfg)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn exited before it started")
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
