"""SSE on a real uvicorn: headers, retry hint and heartbeats, bad Last-Event-ID or offset,
``POST /generate``, and a client that leaves frees its follower."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from reviewstream.settings import Settings
from reviewstream.web import create_app

from tests.support import followers as fl
from tests.support.live import REVIEW, new_job, stored, tuned
from tests.support.servers import serve


async def test_sse_headers_retry_hint_and_heartbeats(settings: Settings) -> None:
    beating = tuned(settings, sim_first_token_ms=900, sse_heartbeat_seconds=0.2)
    async with serve(create_app(beating)) as base, httpx.AsyncClient(base_url=base) as c:
        job_id = await new_job(c, length_words=50)
        async with c.stream("GET", f"/jobs/{job_id}/events") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["cache-control"] == "no-store"
            assert r.headers["x-accel-buffering"] == "no"
            body = ""
            async for chunk in r.aiter_text():
                body += chunk
                if "event: end" in body:
                    break
    assert "retry: 1000" in body
    assert body.count(": ping") >= 2  # heartbeats while the model had not started
    assert body.index(": ping") < body.index("event: token")


@pytest.mark.parametrize("bad", ["abc", "-3"])
async def test_sse_bad_last_event_id_or_offset_is_422(
    server: tuple[str, httpx.AsyncClient], bad: str
) -> None:
    _, c = server
    job_id = await new_job(c)
    r = await c.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": bad})
    assert r.status_code == 422 and "Last-Event-ID" in r.json()["error"]
    r = await c.get(f"/jobs/{job_id}/events", params={"offset": bad})
    assert r.status_code == 422 and "offset" in r.json()["error"]
    r = await c.get("/jobs/unknown-job/events")
    assert r.status_code == 404


async def test_the_document_declares_sse_errors_as_json_and_each_event(
    server: tuple[str, httpx.AsyncClient],
) -> None:
    _, c = server
    spec = (await c.get("/openapi.json")).json()
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    for path, method in (("/jobs/{job_id}/events", "get"), ("/generate", "post")):
        answers = spec["paths"][path][method]["responses"]
        stream = answers.pop("200")["content"]
        assert list(stream) == ["text/event-stream"]
        event = stream["text/event-stream"]["schema"]
        assert event["properties"]["event"]["enum"] == ["token", "end", "error"]
        assert {"401", "404" if method == "get" else "413", "422", "429", "503"} <= set(answers)
        for answer in answers.values():  # errors are answered as JSON, never as a stream
            assert answer["content"] == {"application/json": {"schema": error_body}}
    r = await c.get("/jobs/unknown-job/events")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"


async def test_generate_streams_a_new_job_as_sse(server: tuple[str, httpx.AsyncClient]) -> None:
    _, c = server
    tokens: list[str] = []
    async with c.stream("POST", "/generate", json=REVIEW) as r:
        assert r.status_code == 200
        job_id = r.headers["x-job-id"]
        from httpx_sse import EventSource

        async for event in EventSource(r).aiter_sse():
            if event.event == "token":
                tokens += json.loads(event.data)["tokens"]
            elif event.event == "end":
                assert json.loads(event.data)["status"] == "done"
                break
    assert tokens == await stored(c, job_id)
    assert "Katherine Johnson" in "".join(tokens)
    r = await c.post("/generate", json={"employee_name": "x"})
    assert r.status_code == 422


async def test_sse_client_disconnect_frees_its_follower(settings: Settings) -> None:
    slow = tuned(settings, sim_tokens_per_second=50)
    async with serve(create_app(slow)) as base, httpx.AsyncClient(base_url=base) as c:
        job_id = await new_job(c)

        async def followers() -> float:
            text = (await c.get("/metrics")).text
            line = next(x for x in text.splitlines() if x.startswith("reviewstream_followers "))
            return float(line.split()[1])

        baseline = await followers()
        part = await fl.sse(c, job_id, stop_after=3)
        assert part.tokens
        deadline = time.monotonic() + 2
        while await followers() > baseline and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await followers() == baseline
        await c.delete(f"/jobs/{job_id}")


# What GET /jobs/{id}/events reads, sent to a real server: the start offset each request
# resumes from (Last-Event-ID wins over ?offset=), or None for a 422 naming the parameter.
STARTS: list[tuple[dict[str, str], dict[str, str], int | None]] = [
    ({}, {}, 0),
    ({"offset": "5"}, {}, 5),
    ({}, {"Last-Event-ID": "0007"}, 7),
    ({"offset": "2"}, {"Last-Event-ID": "11"}, 11),
    ({"offset": "00000000000000004"}, {}, 4),
    ({"token": ""}, {}, 0),  # an empty token is no token
    ({"offset": "+4"}, {}, None),
    ({"offset": ""}, {}, None),
    ({"offset": "9007199254740993"}, {}, None),
    ({"offset": "\u0663"}, {}, None),  # an Arabic-Indic digit
    ({}, {"Last-Event-ID": "x"}, None),
    ({}, {"Last-Event-ID": "-3"}, None),
]


async def test_the_start_offset_is_read_as_every_delivery_route_reads_it(
    server: tuple[str, httpx.AsyncClient],
) -> None:
    _, c = server
    job_id = await new_job(c, length_words=50)
    await stored(c, job_id)  # ended: every read sees the same stored batches
    for params, headers, start in STARTS:
        r = await c.get(f"/jobs/{job_id}/events", params=params, headers=headers)
        if start is None:
            assert r.status_code == 422, (params, headers)
            named = "header.Last-Event-ID" if headers else "query.offset"
            assert named in r.json()["error"], (params, headers)
            continue
        assert r.status_code == 200, (params, headers, r.text)
        first = next(line for line in r.text.splitlines() if line.startswith("data: {"))
        assert json.loads(first[len("data: ") :])["offset"] == start, (params, headers)
