"""SSE reads that the server closes now and then (PROTOCOL 10.2: about every 60 s, so that new
readers collapse onto edge requests), with the interval made short: a read ends between events
without the stream's closure, and a reader that resumes from the last control event's
``streamNextOffset`` misses nothing and gets nothing twice — by hand, and by the official
TypeScript client, which reconnects by itself."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from reviewstream.settings import Settings
from reviewstream.streams import offsets
from reviewstream.web import create_app
from reviewstream.web.routes import durable

from tests.support.servers import serve
from tests.web.test_durable_streams import parse_sse, read_sse
from tests.web.test_durable_streams_clients import (
    Server,
    configured,
    run_script,
    start_job,
    stored_text,
)

TEXT = {"Content-Type": "text/plain"}


@pytest.fixture
def short_sse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(durable, "SSE_CLOSE_SECONDS", 0.3)


@pytest.fixture
def client_sse(monkeypatch: pytest.MonkeyPatch) -> None:
    # Above the TypeScript client's `minConnectionDuration` (1 s by default): a connection
    # that ends sooner counts as a broken proxy, and a few of them stop its SSE session.
    monkeypatch.setattr(durable, "SSE_CLOSE_SECONDS", 1.2)


async def session(c: httpx.AsyncClient, offset: str) -> tuple[str, list[dict[str, object]]]:
    """One SSE read from ``offset`` until the server ends it: its text and control events."""
    params = {"offset": offset, "live": "sse"}
    r, body = await asyncio.wait_for(read_sse(c, "/v1/stream/notes", params=params), 30)
    assert r.status_code == 200
    events = parse_sse(body)
    text = "".join(data for kind, data, _ in events if kind == "data")
    return text, [json.loads(data) for kind, data, _ in events if kind == "control"]


async def test_an_sse_read_ends_between_events_and_resumes_exactly(
    settings: Settings, short_sse: None
) -> None:
    async with serve(create_app(settings)) as base, httpx.AsyncClient(base_url=base) as c:
        assert (await c.put("/v1/stream/notes", content=b"one", headers=TEXT)).status_code == 201
        # Nothing new comes: the read still ends, open, at the offset it delivered.
        text, controls = await session(c, "-1")
        assert text == "one"
        assert controls[-1]["streamNextOffset"] == offsets.encode(1)
        assert not any(f.get("streamClosed") for f in controls)
        # The next read resumes there and gets only what came since, then ends again.
        reading = asyncio.create_task(session(c, str(controls[-1]["streamNextOffset"])))
        r = await c.post("/v1/stream/notes", content=b" two", headers=TEXT)
        assert r.status_code == 204
        text, controls = await reading
        assert text == " two" and controls[-1]["streamNextOffset"] == offsets.encode(2)
        assert not any(f.get("streamClosed") for f in controls)
        # Once the stream is closed, a read says so and ends for good.
        closing = {"Stream-Closed": "true"}
        assert (await c.post("/v1/stream/notes", headers=closing)).status_code == 204
        text, controls = await session(c, offsets.encode(2))
        assert text == "" and controls[-1]["streamClosed"] is True


async def test_the_typescript_client_reconnects_through_server_closes(
    settings: Settings, client_sse: None
) -> None:
    s = configured(settings, keyed=False)  # a review takes several close intervals
    async with serve(create_app(s)) as base:
        server = Server(base, {})
        job_id, url = await start_job(server)
        got = await run_script("follow.mjs", url=url, live="sse")
        text = await stored_text(server, job_id)
    assert text and got["text"] == text  # exact across reconnects: nothing lost, nothing twice
    assert got["streamClosed"] is True
    assert got["requests"] > 1, got  # the server closed the read and the client came back
