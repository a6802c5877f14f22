"""The Durable Streams protocol's own clients against a live reviewstream server: the official
TypeScript client (npm ``@durable-streams/client``, scripts in tests/node/durable_streams/) and
the Python client (PyPI ``durable-streams``), on a real uvicorn and a real redis-server with the
simulated model.

A job is read at the URL its ``links["durable_stream"]`` gives (carrying ``?token=`` on a keyed
server); outside streams are written at ``/v1/stream/<name>``. Each test compares what a client
read with what reviewstream stored (the short poll's text) or what was written, byte for byte:
tokens begin with spaces and may hold newlines, and a standard SSE parser drops one space after
``data:`` (DESIGN, Round 3: "Text is exact").
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from durable_streams import astream

from reviewstream.settings import Settings
from reviewstream.web import create_app, server_options

from tests.support import node
from tests.support.live import REVIEW, stored
from tests.support.servers import serve

KEY = "key-alice"
SCRIPT_SECONDS = 60.0
# Slow enough that a review is still being written while a client starts and follows it.
PACE = {"sim_tokens_per_second": 40.0, "sim_first_token_ms": 200}
WORDS = [
    " Katherine", " Johnson's", " trajectory", " analysis", "\n\nwas", "  exact:", " data:",
    " naïve", " readers", " 🚀", "\n", " keep", " every", " space.",
]  # fmt: skip


@dataclass
class Server:
    base: str
    headers: dict[str, str]  # what a key holder sends (empty on an open server)


def configured(settings: Settings, keyed: bool) -> Settings:
    """``settings`` paced for live reads, with an API key when ``keyed`` (validated again, so
    that the secrets become ``SecretStr``)."""
    values: dict[str, Any] = {**settings.model_dump(), **PACE, "worker_grace_seconds": 0.2}
    if keyed:
        values |= {"api_keys": f"alice:{KEY}", "token_secret": "durable-streams-test-secret"}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(params=["open", "keyed"])
async def server(settings: Settings, request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    keyed = request.param == "keyed"
    s = configured(settings, keyed)
    async with serve(create_app(s), **server_options(s)) as base:
        yield Server(base, {"Authorization": f"Bearer {KEY}"} if keyed else {})


async def start_job(server: Server) -> tuple[str, str]:
    """A new review: its id and its Durable Streams URL (absolute) from its links."""
    async with httpx.AsyncClient(base_url=server.base, headers=server.headers) as c:
        r = await c.post("/jobs", json=REVIEW)
        assert r.status_code == 202, r.text
        body = r.json()
    link = body["links"].get("durable_stream")
    assert link, f"the job's links have no durable_stream: {body['links']}"
    if server.headers:
        assert "token=" in link, f"a keyed server's link carries the stream token: {link}"
    return str(body["id"]), urljoin(server.base, link)


async def stored_text(server: Server, job_id: str) -> str:
    """The job's whole text once it has ended, by short poll."""
    async with httpx.AsyncClient(base_url=server.base, headers=server.headers, timeout=30) as c:
        return "".join(await stored(c, job_id))


async def run_script(script: str, **args: Any) -> dict[str, Any]:
    """Runs one of tests/node/durable_streams/'s scripts; what it printed."""
    folder = node.folder("durable_streams")
    run = await node.run(folder, [script, node_json(args)], {}, SCRIPT_SECONDS)
    result: dict[str, Any] = run.json()
    return result


def node_json(args: dict[str, Any]) -> str:
    """A script's argument: ``args`` and its own bound, inside the test's."""
    return json.dumps({**args, "seconds": SCRIPT_SECONDS - 5})


@pytest.mark.timeout(SCRIPT_SECONDS + 30)
@pytest.mark.parametrize("live", ["sse", "long-poll"])
@pytest.mark.parametrize("resume", [False, True], ids=["from -1", "from a saved offset"])
async def test_the_typescript_client_follows_a_running_review_to_its_end(
    server: Server, live: str, resume: bool
) -> None:
    job_id, url = await start_job(server)
    # The link alone authorizes the read: no key goes with it.
    got = await run_script("follow.mjs", url=url, live=live, resume=resume)
    text = await stored_text(server, job_id)
    assert text, "the review has text"
    assert got["text"] == text
    assert got["streamClosed"] is True
    if resume:
        assert got["prefix"] and got["savedOffset"] != "-1", got


@pytest.mark.timeout(SCRIPT_SECONDS + 30)
async def test_the_typescript_client_is_refused_without_the_links_token(settings: Settings) -> None:
    s = configured(settings, keyed=True)
    async with serve(create_app(s), **server_options(s)) as base:
        job_id, url = await start_job(Server(base, {"Authorization": f"Bearer {KEY}"}))
        bare = url.split("?", 1)[0]
        run = await node.run(
            node.folder("durable_streams"),
            ["follow.mjs", node_json({"url": bare, "live": "sse"})],
            {},
            SCRIPT_SECONDS,
        )
    assert run.returncode != 0, run.explain()
    assert "401" in run.stderr, run.explain()


async def test_the_python_client_reads_a_finished_review_in_one_catch_up_read(
    server: Server,
) -> None:
    job_id, url = await start_job(server)
    text = await stored_text(server, job_id)  # the job has ended
    requests: list[httpx.Request] = []

    async def seen(request: httpx.Request) -> None:
        requests.append(request)

    async with (
        httpx.AsyncClient(timeout=30, event_hooks={"request": [seen]}) as client,
        astream(url, offset="-1", live=False, client=client) as res,
    ):
        got = await res.read_text()
    assert got == text
    assert [r.method for r in requests] == ["GET"], requests


@pytest.mark.timeout(SCRIPT_SECONDS + 30)
async def test_the_typescript_producer_writes_what_its_live_sse_reader_reads(
    server: Server,
) -> None:
    url = f"{server.base}/v1/stream/words-{uuid.uuid4().hex}"
    got = await run_script("produce.mjs", url=url, words=WORDS, headers=server.headers)
    assert got["written"] == "".join(WORDS)
    assert got["read"] == got["written"]
    assert got["readerClosed"] is True
    async with httpx.AsyncClient(headers=server.headers) as c:
        r = await c.get(url, params={"offset": "-1"})
    assert r.status_code == 200, r.text
    assert r.content.decode() == "".join(WORDS)
