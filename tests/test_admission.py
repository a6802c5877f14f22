"""Admission on real uvicorn servers and a real Redis: per-key quotas shared by processes, a
flood that stays bounded, no worker means no new jobs, queued jobs that time out, stream caps."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import redis.asyncio as aioredis

from reviewstream.keys import Keys
from reviewstream.settings import Settings
from reviewstream.store import Store
from reviewstream.web import create_app, server_options

from tests.support.servers import serve

REVIEW = {"employee_name": "Edsger Dijkstra", "employee_review_points": "Shortest paths"}
ALICE = {"Authorization": "Bearer key-alice"}
BOB = {"Authorization": "Bearer key-bob"}


def keyed(settings: Settings, **changes: Any) -> Settings:
    values = {
        **settings.model_dump(),
        "api_keys": "alice:key-alice,bob:key-bob",
        "worker_grace_seconds": 0.2,
        **changes,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def api(s: Settings, *, run_worker: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(s, run_worker=run_worker), **server_options(s)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            yield c


async def test_per_minute_quota_and_tokens_are_shared_by_two_api_processes(
    settings: Settings,
) -> None:
    # No REVIEWSTREAM_TOKEN_SECRET: the processes agree on one through Redis.
    s = keyed(settings, jobs_per_minute_per_key=3)
    async with api(s) as a, api(s, run_worker=False) as b:
        codes = [(await c.post("/jobs", json=REVIEW, headers=ALICE)) for c in (a, b, a)]
        assert [r.status_code for r in codes] == [202, 202, 202]
        r = await b.post("/jobs", json=REVIEW, headers=ALICE)
        assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
        assert "REVIEWSTREAM_JOBS_PER_MINUTE_PER_KEY" in r.json()["error"]
        assert (await a.post("/jobs", json=REVIEW, headers=BOB)).status_code == 202
        link = codes[0].json()["links"]["poll"]  # a token signed by process a
        assert (await b.get(link)).status_code == 200


async def test_active_jobs_quota_frees_a_slot_when_a_job_ends(settings: Settings) -> None:
    s = keyed(settings, max_active_jobs_per_key=2, sim_tokens_per_second=20.0)
    async with api(s) as c:
        first = (await c.post("/jobs", json=REVIEW, headers=ALICE)).json()
        assert (await c.post("/jobs", json=REVIEW, headers=ALICE)).status_code == 202
        r = await c.post("/jobs", json=REVIEW, headers=ALICE)
        assert r.status_code == 429 and r.headers["Retry-After"]
        assert r.json()["detail"] == {"limit": "REVIEWSTREAM_MAX_ACTIVE_JOBS_PER_KEY"}
        assert (await c.post("/jobs", json=REVIEW, headers=BOB)).status_code == 202
        assert (await c.delete(f"/jobs/{first['id']}", headers=ALICE)).status_code == 204
        assert (await c.post("/jobs", json=REVIEW, headers=ALICE)).status_code == 202


async def test_flood_from_one_key_is_bounded_and_spares_the_others(
    settings: Settings, redis: aioredis.Redis
) -> None:
    per_minute = 40
    s = keyed(settings, jobs_per_minute_per_key=per_minute, max_active_jobs_per_key=per_minute)
    async with api(s) as c:
        await c.post("/jobs", json=REVIEW, headers=BOB)  # warm every pool before measuring
        before = (await redis.info("memory"))["used_memory"]
        gate = asyncio.Semaphore(50)

        async def one() -> httpx.Response:
            async with gate:
                return await c.post("/jobs", json=REVIEW, headers=ALICE)

        answers = await asyncio.gather(*(one() for _ in range(2000)))
        counts = Counter(r.status_code for r in answers)
        assert counts == {202: per_minute, 429: 2000 - per_minute}, counts
        assert all(r.headers.get("Retry-After") for r in answers if r.status_code == 429)
        assert (await c.post("/jobs", json=REVIEW, headers=BOB)).status_code == 202
        grown = (await redis.info("memory"))["used_memory"] - before
    # Each admitted job holds its meta and its tokens with their times (at most 700 tokens of a
    # 350-word review: under 128 KB); Redis' buffers for the pools' connections come on top. A
    # queue that took all 2,000 would hold fifty times this.
    assert grown < (per_minute + 1) * 128 * 1024 + 4 * 1024 * 1024, grown


async def test_no_worker_means_not_ready_and_no_new_jobs(settings: Settings) -> None:
    async with api(keyed(settings), run_worker=False) as c:
        r = await c.get("/readyz")
        assert r.status_code == 503 and "no worker" in r.json()["error"]
        assert r.json()["detail"] is None  # the one error shape (ErrorBody), as documented
        r = await c.post("/jobs", json=REVIEW, headers=ALICE)
        assert r.status_code == 503 and r.headers["Retry-After"]
        assert "no worker" in r.json()["error"]


async def test_a_queued_job_nobody_starts_fails_after_the_timeout(
    settings: Settings, redis: aioredis.Redis
) -> None:
    s = keyed(settings, queued_timeout_seconds=0.5)
    store = Store(redis, Keys(), retention_seconds=60)
    async with api(s, run_worker=False) as c:
        await store.workers.heartbeat("a-worker-that-never-claims", 60_000)
        job = (await c.post("/jobs", json=REVIEW, headers=ALICE)).json()
        # Unclaimed, its meta expires when it would have, failed at the timeout: should its
        # queue entry never have been added (the creating process died), it goes all the same.
        ttl_ms = await redis.pttl(Keys().meta(job["id"]))
        assert 60_000 < ttl_ms <= (0.5 + s.retention_seconds) * 1000
        for _ in range(100):
            page = (await c.get(f"/jobs/{job['id']}", headers=ALICE)).json()
            if page["done"]:
                break
            await asyncio.sleep(0.05)
    assert page["status"] == "failed" and "no worker started the job" in page["error"]
    assert await redis.ttl(Keys().meta(job["id"])) > 0  # expires like every ended job
    assert await redis.xlen(Keys().queue(0)) == 0


async def test_queue_full_is_503_with_retry_after(settings: Settings) -> None:
    s = keyed(settings, max_queued_jobs=2, worker_concurrency=1, sim_tokens_per_second=5.0)
    async with api(s) as c:
        codes = [(await c.post("/jobs", json=REVIEW, headers=ALICE)).status_code for _ in range(5)]
        assert codes[:3] == [202, 202, 202] and 503 in codes[3:], codes


async def test_open_streams_per_key_are_capped(settings: Settings) -> None:
    s = keyed(settings, max_streams_per_key=2, sim_tokens_per_second=5.0)
    async with api(s) as c:
        job = (await c.post("/jobs", json=REVIEW, headers=ALICE)).json()
        url = f"/jobs/{job['id']}/events"
        async with c.stream("GET", url, headers=ALICE), c.stream("GET", url, headers=ALICE):
            async with c.stream("GET", url, headers=ALICE) as third:
                assert third.status_code == 429 and third.headers["Retry-After"]
            r = await c.get(f"/jobs/{job['id']}/long-poll?timeout=0.1", headers=ALICE)
            assert r.status_code == 429
            async with c.stream("GET", url, headers=BOB) as other:
                assert other.status_code == 404  # bob's own limit is untouched; not his job
        r = await c.get(f"/jobs/{job['id']}/long-poll?timeout=0.1", headers=ALICE)
        assert r.status_code == 200  # the streams closed: the key may open more


async def test_keys_streams_written_at_v1_stream_are_metered(settings: Settings) -> None:
    s = keyed(settings, max_open_durable_streams_per_key=2, durable_streams_per_minute_per_key=5)
    text = {"Content-Type": "text/plain"}
    alice, bob = {**ALICE, **text}, {**BOB, **text}

    async def put(name: str, headers: dict[str, str], **more: str) -> httpx.Response:
        return await c.put(f"/v1/stream/{name}", content=b"x", headers={**headers, **more})

    async def close(name: str) -> None:
        r = await c.post(f"/v1/stream/{name}", headers={**ALICE, "Stream-Closed": "true"})
        assert r.status_code == 204

    async with api(s, run_worker=False) as c:
        assert (await put("a", alice)).status_code == 201
        assert (await put("a", alice)).status_code == 200  # the same again: not counted again
        # A PUT that creates nothing gives back what it took (a fork of nothing: 404).
        r = await put("z", alice, **{"Stream-Forked-From": "/v1/stream/none"})
        assert r.status_code == 404
        assert (await put("b", alice)).status_code == 201
        r = await put("c", alice)  # two open: the protocol's 429, with when to try again
        assert r.status_code == 429 and float(r.headers["Retry-After"]) > 0
        assert r.json()["detail"] == {"limit": "REVIEWSTREAM_MAX_OPEN_DURABLE_STREAMS_PER_KEY"}
        assert r.headers["x-content-type-options"] == "nosniff"
        assert (await c.get("/v1/stream/a", headers=ALICE)).status_code == 200  # reads are not
        assert (await put("c", bob)).status_code == 201  # another key's quota is its own
        await close("a")  # a closed stream is no longer open
        assert (await put("d", alice)).status_code == 201
        assert (await c.delete("/v1/stream/b", headers=ALICE)).status_code == 204  # nor a deleted
        assert (await put("e", alice)).status_code == 201
        await close("d")
        assert (await put("f", alice)).status_code == 201  # the fifth created this minute
        await close("e")
        r = await put("g", alice)
        assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
        assert r.json()["detail"] == {"limit": "REVIEWSTREAM_DURABLE_STREAMS_PER_MINUTE_PER_KEY"}
        # Appends to a key's streams are not metered.
        for _ in range(3):
            r = await c.post("/v1/stream/f", content=b"y", headers=alice)
            assert r.status_code == 204
