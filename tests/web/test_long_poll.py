"""Long poll on a real uvicorn: a timeout is a 200 with no tokens, held at most the server's cap."""

from __future__ import annotations

import time

import httpx

from reviewstream.settings import Settings
from reviewstream.web import create_app

from conftest import serve
from live import new_job, tuned


async def test_long_poll_timeout_is_200_with_no_tokens_and_capped(settings: Settings) -> None:
    waiting = tuned(settings, sim_first_token_ms=5000, long_poll_max_timeout=0.5)
    async with serve(create_app(waiting)) as base, httpx.AsyncClient(base_url=base) as c:
        job_id = await new_job(c)
        started = time.monotonic()
        r = await c.get(f"/jobs/{job_id}/long-poll", params={"offset": 0, "timeout": 0.2})
        assert 0.15 < time.monotonic() - started < 2
        page = r.json()
        assert r.status_code == 200 and page["tokens"] == [] and not page["done"]
        assert page["next_offset"] == 0
        started = time.monotonic()
        await c.get(f"/jobs/{job_id}/long-poll", params={"timeout": 300})
        assert time.monotonic() - started < 2  # held at most the server's cap
        r = await c.get(f"/jobs/{job_id}/long-poll", params={"timeout": -1})
        assert r.status_code == 422 and "timeout" in r.json()["error"]
