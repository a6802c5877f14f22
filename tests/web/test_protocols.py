"""uvicorn's WebSocket protocol as the app runs it (``web/protocols.py``).

``LeanWebSocket``'s inbox and
flag behave as the asyncio classes they replace; the WebSocket tests that run with
``server_options`` (test_edges, test_server_close, test_proxy, test_auth) exercise it whole.
"""

from __future__ import annotations

import asyncio

from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.server import ServerState

from reviewstream.settings import Settings
from reviewstream.web import server_options
from reviewstream.web.protocols import Flag, Inbox, LeanWebSocket


async def test_the_lean_websockets_inbox_and_flag_behave_as_asyncio_s() -> None:
    inbox: Inbox[int] = Inbox()
    assert inbox.empty()
    first, second = asyncio.create_task(inbox.get()), asyncio.create_task(inbox.get())
    cancelled = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert sorted(await asyncio.gather(first, second)) == [1, 2]  # two waiters, both served
    assert cancelled.cancelled() and inbox.empty()
    inbox.put_nowait(3)
    assert not inbox.empty() and await inbox.get() == 3
    flag = Flag()
    waiting = asyncio.create_task(flag.wait())
    await asyncio.sleep(0.01)
    assert not waiting.done() and not flag.is_set()
    flag.set()
    await asyncio.wait_for(waiting, 1)
    flag.clear()
    assert not flag.is_set()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    await Response(b"ok")(scope, receive, send)


async def test_a_server_with_the_app_s_options_uses_the_lean_protocols() -> None:
    options = server_options(Settings(_env_file=None))  # type: ignore[call-arg]
    assert options["ws"] is LeanWebSocket
    config = Config(app, **options, lifespan="off")
    config.load()
    protocol = LeanWebSocket(config=config, server_state=ServerState(), app_state={})
    assert isinstance(protocol.queue, Inbox) and isinstance(protocol.writable, Flag)
    assert protocol.writable.is_set()  # as uvicorn leaves its Event
