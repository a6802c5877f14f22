"""The HTTP API on a real uvicorn: create, short poll by offset, cancel, errors, health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from reviewstream.keys import Keys
from reviewstream.settings import Settings
from reviewstream.web import create_app

from tests.support.servers import serve

REVIEW = {
    "employee_name": "Ada Lovelace",
    "employee_review_points": "Led the payments migration; mentors two juniors; needs to delegate",
    "length_words": 80,
}


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(settings)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            yield c


async def poll_all(c: httpx.AsyncClient, job_id: str, offset: int = 0) -> tuple[list[str], Any]:
    tokens: list[str] = []
    while True:
        r = await c.get(f"/jobs/{job_id}", params={"offset": offset})
        assert r.status_code == 200, r.text
        page = r.json()
        assert page["offset"] == offset
        assert page["next_offset"] == offset + len(page["tokens"])
        tokens += page["tokens"]
        offset = page["next_offset"]
        if page["done"]:
            return tokens, page
        await asyncio.sleep(0.01)


async def test_create_answers_202_with_links_to_every_mode(client: httpx.AsyncClient) -> None:
    r = await client.post("/jobs", json=REVIEW)
    assert r.status_code == 202
    job = r.json()
    assert job["status"] == "queued"
    assert set(job["links"]) == {"poll", "long_poll", "sse", "ws", "ui_stream", "durable_stream"}
    assert job["links"]["sse"] == f"/jobs/{job['id']}/events"
    assert job["links"]["ui_stream"] == f"/jobs/{job['id']}/stream"


async def test_short_poll_reads_whole_review_equal_to_stored_text(
    client: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    job = (await client.post("/jobs", json=REVIEW)).json()
    tokens, last = await poll_all(client, job["id"])
    assert last["status"] == "done" and last["error"] is None
    assert last["usage"]["output_tokens"] == len(tokens)
    stored = await redis.lrange(Keys().chunks(job["id"]), 0, -1)
    assert tokens == stored
    assert "Ada Lovelace" in "".join(tokens)


@pytest.mark.parametrize("where", ["start", "middle", "end", "past_end"])
async def test_short_poll_offsets(client: httpx.AsyncClient, where: str) -> None:
    job = (await client.post("/jobs", json=REVIEW)).json()
    full, _ = await poll_all(client, job["id"])
    offset = {"start": 0, "middle": len(full) // 2, "end": len(full), "past_end": len(full) + 50}[
        where
    ]
    r = await client.get(f"/jobs/{job['id']}", params={"offset": offset, "limit": 10_000})
    page = r.json()
    assert page["tokens"] == full[offset:]
    assert page["next_offset"] == offset + len(full[offset:])
    assert page["done"] is True


async def test_limit_bounds_the_page(client: httpx.AsyncClient) -> None:
    job = (await client.post("/jobs", json=REVIEW)).json()
    full, _ = await poll_all(client, job["id"])
    page = (await client.get(f"/jobs/{job['id']}", params={"offset": 3, "limit": 5})).json()
    assert page["tokens"] == full[3:8] and page["next_offset"] == 8 and not page["done"]
    assert len(page["ts"]) == 5


@pytest.mark.parametrize("bad", ["-1", "abc", "1.5", ""])
async def test_bad_offset_is_422_naming_offset(client: httpx.AsyncClient, bad: str) -> None:
    job = (await client.post("/jobs", json=REVIEW)).json()
    r = await client.get(f"/jobs/{job['id']}", params={"offset": bad})
    assert r.status_code == 422
    assert "offset" in r.json()["error"]


async def test_unknown_and_malformed_job_ids(client: httpx.AsyncClient) -> None:
    r = await client.get("/jobs/does-not-exist", params={"offset": 0})
    assert r.status_code == 404 and "not found" in r.json()["error"]
    r = await client.get("/jobs/" + "x" * 65)
    assert r.status_code == 422 and "job_id" in r.json()["error"]
    assert (await client.delete("/jobs/does-not-exist")).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"employee_name": 5, "employee_review_points": "x"}, "employee_name"),
        ({"employee_name": "Ada"}, "employee_review_points"),
        ({**REVIEW, "employee_name": ""}, "employee_name"),
        ({**REVIEW, "tone": "sarcastic"}, "tone"),
        ({**REVIEW, "length_words": 10}, "length_words"),
        ({**REVIEW, "provider": "nope"}, "provider"),
        ({**REVIEW, "surprise": 1}, "surprise"),
    ],
)
async def test_invalid_request_is_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    r = await client.post("/jobs", json=body)
    assert r.status_code == 422
    assert field in r.json()["error"]


async def test_non_json_body_is_422(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422


@pytest.mark.parametrize(
    "body",
    [b'{"employee_name": "\xff"}', b"[" * 5000],
    ids=["not UTF-8", "nested too deep"],
)
async def test_a_body_that_cannot_be_decoded_is_422_not_400(
    client: httpx.AsyncClient, body: bytes
) -> None:
    # FastAPI answers 400 "error parsing the body" for these, a status the document lacks.
    r = await client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"].startswith("invalid request: body is not readable JSON")


async def test_oversized_request_is_413(client: httpx.AsyncClient) -> None:
    body = {**REVIEW, "employee_review_points": "x" * 70_000}
    r = await client.post("/jobs", json=body)
    assert r.status_code == 413
    assert "larger than" in r.json()["error"]


async def test_an_oversized_body_without_content_length_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # chunked: the size shows only while reading
        yield b'{"employee_name": "Ada", "employee_review_points": "'
        for _ in range(70):
            yield b"x" * 1000
        yield b'"}'

    r = await client.post("/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json() == {"error": "request body larger than 65536 bytes", "detail": None}


async def test_the_routers_own_refusals_are_json_error_bodies(client: httpx.AsyncClient) -> None:
    r = await client.request("TRACE", "/jobs")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json() == {"error": "Method Not Allowed: TRACE /jobs", "detail": None}
    r = await client.get("/no/such/path")
    assert r.status_code == 404
    assert r.json() == {"error": "Not Found: GET /no/such/path", "detail": None}


async def test_unknown_simulated_model_is_422(client: httpx.AsyncClient) -> None:
    r = await client.post("/jobs", json={**REVIEW, "model": "gpt-17"})
    assert r.status_code == 422 and "gpt-17" in r.json()["error"]


async def test_cancel_ends_job_cancelled_and_second_cancel_conflicts(
    settings: Settings,
) -> None:
    slow = settings.model_copy(update={"sim_tokens_per_second": 20})
    async with serve(create_app(slow)) as base, httpx.AsyncClient(base_url=base) as c:
        job = (await c.post("/jobs", json=REVIEW)).json()
        while not (await c.get(f"/jobs/{job['id']}")).json()["tokens"]:
            await asyncio.sleep(0.02)
        assert (await c.delete(f"/jobs/{job['id']}")).status_code == 204
        page = (await c.get(f"/jobs/{job['id']}")).json()
        assert page["status"] == "cancelled" and page["done"]
        count = len((await c.get(f"/jobs/{job['id']}", params={"limit": 10000})).json()["tokens"])
        await asyncio.sleep(0.3)  # the worker stopped: nothing more is appended
        later = (await c.get(f"/jobs/{job['id']}", params={"limit": 10000})).json()
        assert len(later["tokens"]) == count
        r = await c.post(f"/jobs/{job['id']}/cancel")
        assert r.status_code == 409 and "cancelled" in r.json()["error"]


async def test_health_ready_and_docs(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    assert (await client.get("/docs")).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/events", "/generate"} <= set(spec["paths"])


async def test_readyz_is_503_when_redis_goes_away(settings: Settings) -> None:
    from tests.support.redis_server import redis_process

    with redis_process() as (proc, url):
        app = create_app(settings.model_copy(update={"redis_url": url}))
        async with serve(app) as base, httpx.AsyncClient(base_url=base) as c:
            assert (await c.get("/readyz")).status_code == 200
            proc.kill()
            proc.wait()
            r = await c.get("/readyz")
            assert r.status_code == 503 and "Redis" in r.json()["error"]
            r = await c.get("/jobs/abc")
            assert r.status_code == 503 and "storage unavailable" in r.json()["error"]
            assert r.headers["Retry-After"] and url.rsplit(":", 1)[1].split("/")[0] not in r.text
