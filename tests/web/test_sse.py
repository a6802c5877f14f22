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
from reviewstream.web.routes.sse import plain_parameters

import followers as fl
from conftest import serve
from live import REVIEW, new_job, stored, tuned


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


def _scope(
    query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None, **over: object
) -> dict[str, object]:
    scope: dict[str, object] = {
        "type": "http",
        "method": "GET",
        "path_params": {"job_id": "job-1"},
        "headers": headers or [],
        "query_string": query,
    }
    return {**scope, **over}


# What GET /jobs/{id}/events answers without FastAPI's request handling: (job, start, bearer,
# token) exactly as FastAPI reads them, or None for anything FastAPI must answer itself.
PLAIN_CASES: list[tuple[dict[str, object], tuple[str, int, str | None, str | None] | None]] = [
    (_scope(), ("job-1", 0, None, None)),
    (_scope(b"offset=12"), ("job-1", 12, None, None)),
    (_scope(headers=[(b"last-event-id", b"7")]), ("job-1", 7, None, None)),
    (_scope(b"offset=3", [(b"last-event-id", b"0009")]), ("job-1", 9, None, None)),
    (_scope(b"offset=9007199254740992"), ("job-1", 2**53, None, None)),
    (_scope(b"token=tok&x=1"), ("job-1", 0, None, "tok")),
    (_scope(b"token="), ("job-1", 0, None, None)),  # FastAPI's APIKeyQuery: empty is none
    (_scope(headers=[(b"authorization", b"Bearer k-1")]), ("job-1", 0, "k-1", None)),
    (_scope(headers=[(b"authorization", b"bearer k-1")]), ("job-1", 0, "k-1", None)),
    (_scope(headers=[(b"accept", b"text/event-stream")]), ("job-1", 0, None, None)),
    (_scope(method="HEAD"), None),
    (_scope(path_params={"job_id": "no/slash"}), None),
    (_scope(path_params={"job_id": "x" * 65}), None),
    (_scope(b"offset=9007199254740993"), None),
    (_scope(b"offset=00000000000000001"), None),  # 17 digits: FastAPI's to read
    (_scope(b"offset="), None),
    (_scope(b"offset=%2B4"), None),
    (_scope(b"offset=%204"), None),
    (_scope(b"offset=%D9%A3"), None),  # an Arabic-Indic digit
    (_scope(b"offset=1&offset=2"), None),
    (_scope(b"token=a&token=b"), None),
    (_scope(headers=[(b"last-event-id", b"-3")]), None),
    (_scope(headers=[(b"last-event-id", b"1"), (b"last-event-id", b"2")]), None),
    (_scope(headers=[(b"authorization", b"Basic Zm9v")]), None),
    (_scope(headers=[(b"authorization", b"Bearer  k")]), None),
    (_scope(headers=[(b"authorization", b"Bearer")]), None),
    (_scope(headers=[(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")]), None),
]


@pytest.mark.parametrize(("scope", "expected"), PLAIN_CASES)
def test_plain_sse_requests_skip_fastapi_and_read_as_fastapi_would(
    scope: dict[str, object], expected: tuple[str, int, str | None, str | None] | None
) -> None:
    assert plain_parameters(scope) == expected


# Sent as is (most take the plain path) and with `Authorization: Basic` added (ignored in open
# mode, it sends every request to FastAPI's handling): the two answers must be the same bytes.
DIFFERENTIAL: list[tuple[dict[str, str], dict[str, str]]] = [
    ({}, {}),
    ({"offset": "5"}, {}),
    ({}, {"Last-Event-ID": "0007"}),
    ({"offset": "2"}, {"Last-Event-ID": "11"}),
    ({"offset": "00000000000000004"}, {}),
    ({"offset": "+4"}, {}),
    ({"offset": ""}, {}),
    ({"offset": "9007199254740993"}, {}),
    ({"token": ""}, {}),
    ({}, {"Last-Event-ID": "x"}),
]


async def test_plain_and_fastapi_handling_answer_alike(
    server: tuple[str, httpx.AsyncClient],
) -> None:
    _, c = server
    job_id = await new_job(c, length_words=50)
    await stored(c, job_id)  # ended: both reads see the same stored batches
    for params, headers in DIFFERENTIAL:
        answers = []
        for extra in ({}, {"Authorization": "Basic Zm9vOmJhcg=="}):
            r = await c.get(f"/jobs/{job_id}/events", params=params, headers={**headers, **extra})
            answers.append((r.status_code, r.headers.get("content-type"), r.content))
        assert answers[0] == answers[1], (params, headers)
        assert answers[0][0] in (200, 422), (params, headers)
