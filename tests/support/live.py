"""What the live delivery tests share: the review they post, settings changed for one test, and
the HTTP steps they all take (post a job, read its stored text, wait for its first tokens)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from reviewstream.settings import Settings

from tests.support import followers as fl

REVIEW = {
    "employee_name": "Katherine Johnson",
    "employee_review_points": "Trajectory analysis; mentoring; clear writing; could delegate",
    "length_words": 80,
}


def tuned(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update=changes)


async def new_job(c: httpx.AsyncClient, **overrides: Any) -> str:
    r = await c.post("/jobs", json={**REVIEW, **overrides})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


async def stored(c: httpx.AsyncClient, job_id: str) -> list[str]:
    """The whole stored text of a job, once it has ended."""
    return (await fl.short_poll(c, job_id)).tokens


async def until_tokens(c: httpx.AsyncClient, job_id: str, n: int) -> None:
    while len((await c.get(f"/jobs/{job_id}", params={"limit": 10000})).json()["tokens"]) < n:
        await asyncio.sleep(0.01)
