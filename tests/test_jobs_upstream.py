"""Jobs end to end through real OpenAI- and Anthropic-speaking upstreams on loopback: the review
arrives, upstream failures end the job failed with a clear error (never stuck, never "done"),
and cancelling a job closes the upstream connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from reviewstream.settings import Settings
from reviewstream.web import create_app

from tests.support import followers as fl
from tests.support.servers import serve
from tests.support.upstreams import (
    Reply,
    ScriptedUpstream,
    anthropic_frames,
    openai_frames,
    running,
    sse,
)

REVIEW = {"employee_name": "Ada", "employee_review_points": "Led the migration"}


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with running(ScriptedUpstream()) as server:
        yield server


@pytest.fixture
async def api(settings: Settings, upstream: ScriptedUpstream) -> AsyncIterator[httpx.AsyncClient]:
    wired = settings.model_copy(
        update={
            "openai_base_url": upstream.url + "/v1",
            "anthropic_base_url": upstream.url,
            "upstream_max_retries": 1,
            "upstream_first_token_timeout": 2.0,
            "upstream_idle_timeout": 0.5,
        }
    )
    async with serve(create_app(wired)) as base, httpx.AsyncClient(base_url=base) as c:
        yield c


async def run_job(api: httpx.AsyncClient, **fields: Any) -> tuple[list[str], dict[str, Any]]:
    r = await api.post("/jobs", json={**REVIEW, **fields})
    assert r.status_code == 202, r.text
    result = await fl.short_poll(api, r.json()["id"])
    return result.tokens, result.ends[0]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_review_streams_from_a_real_upstream(
    api: httpx.AsyncClient, upstream: ScriptedUpstream, provider: str
) -> None:
    texts = ["Ada", " led", " the", " migration", "."]
    frames = openai_frames(texts) if provider == "openai" else anthropic_frames(texts)
    upstream.script(Reply(frames=frames))
    tokens, end = await run_job(api, provider=provider, model="test-model")
    assert tokens == texts
    assert end["status"] == "done" and end["usage"]["output_tokens"] in (7, 9)
    sent = upstream.requests[0]
    assert sent.json["model"] == "test-model" and sent.json["stream"] is True
    assert "Led the migration" in str(sent.json)


@pytest.mark.parametrize(
    ("reply", "error", "requests"),
    [
        # Broken after the first token: a lost producer, continued by a second attempt, which
        # the same broken upstream fails before anything new (so the job fails).
        (Reply(frames=openai_frames(["Half"], done=False)), "truncated", 2),
        (
            Reply(
                frames=[*openai_frames(["x"], done=False)[:2], sse({"error": {"message": "boom"}})]
            ),
            "boom",
            1,
        ),  # fmt: skip
        (
            Reply(
                status=401,
                body=b'{"error": {"message": "bad key"}}',
                content_type="application/json",
            ),
            "401",
            1,
        ),  # fmt: skip
        # The same, and the second attempt is refused (below): the error names both attempts.
        (Reply(frames=[*openai_frames(["slow"], done=False)[:2], 5.0]), "silent", 2),
    ],
)
async def test_upstream_failure_fails_the_job_with_a_clear_error(
    api: httpx.AsyncClient, upstream: ScriptedUpstream, reply: Reply, error: str, requests: int
) -> None:
    upstream.script(reply)
    if reply.frames and reply.frames[-1] == 5.0:
        upstream.script(Reply(status=401, body=b"no", content_type="text/plain"))
    tokens, end = await run_job(api, provider="openai")
    assert end["status"] == "failed"
    assert error in end["error"]
    # An in-band error and a 401 are never retried; a stream broken mid-way is continued once.
    assert len(upstream.requests) == requests
    if requests == 2:
        assert upstream.requests[1].json["messages"][-1] == {
            "role": "assistant",
            "content": "".join(tokens),
            "prefix": True,
        }


async def test_5xx_before_first_token_is_retried_then_succeeds(
    api: httpx.AsyncClient, upstream: ScriptedUpstream
) -> None:
    upstream.script(
        Reply(status=503, body=b"busy", content_type="text/plain"),
        Reply(frames=openai_frames(["ok"])),
    )
    tokens, end = await run_job(api, provider="openai")
    assert end["status"] == "done" and tokens == ["ok"] and len(upstream.requests) == 2


async def test_cancel_closes_the_upstream_stream(
    api: httpx.AsyncClient, upstream: ScriptedUpstream
) -> None:
    frames = openai_frames(["word "] * 3, done=False)[:3]
    endless = [*frames, *[f for _ in range(200) for f in (0.05, frames[1])]]
    upstream.script(Reply(frames=endless))
    r = await api.post("/jobs", json={**REVIEW, "provider": "openai"})
    job_id = r.json()["id"]
    while not (await api.get(f"/jobs/{job_id}")).json()["tokens"]:
        await asyncio.sleep(0.02)
    assert (await api.delete(f"/jobs/{job_id}")).status_code == 204
    await asyncio.wait_for(upstream.client_gone.wait(), timeout=2)
    page = (await api.get(f"/jobs/{job_id}")).json()
    assert page["status"] == "cancelled" and page["error"] == "cancelled by request"


async def test_provider_without_key_is_refused_at_creation(settings: Settings) -> None:
    async with serve(create_app(settings)) as base, httpx.AsyncClient(base_url=base) as c:
        r = await c.post("/jobs", json={**REVIEW, "provider": "anthropic"})
    assert r.status_code == 422 and "REVIEWSTREAM_ANTHROPIC_API_KEY" in r.json()["error"]
