"""The AI SDK's UI message stream (``GET /jobs/{id}/stream``) on a real uvicorn, read as bytes:
its headers, its exact parts for a finished, running, failed and cancelled job, heartbeats that
are comments, the errors before it starts, and the contract it shares with every mode (keys,
stream tokens as Bearer or ``?token=``, the open-stream quota, the connection cap, its link).
The AI SDK's own client reads it in ``test_ui_stream_sdk.py``."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from reviewstream.models import Batch, JobEnd, JobNotice, JobStatus
from reviewstream.settings import Settings
from reviewstream.web import create_app, server_options
from reviewstream.wire import ui_end, ui_error, ui_status, ui_stream_part, ui_text_delta

from tests.support.live import REVIEW, new_job, stored, tuned
from tests.support.servers import serve
from tests.support.upstreams import Reply, ScriptedUpstream, openai_frames, running, sse

KEYS = "alice:key-alice,bob:key-bob"
ALICE = {"Authorization": "Bearer key-alice"}
BOB = {"Authorization": "Bearer key-bob"}


@dataclass
class Stream:
    """One UI message stream as read: its headers, the parts of its ``data:`` lines (``[DONE]``
    as the string), its comments and its raw body."""

    status: int
    headers: httpx.Headers
    parts: list[Any] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    body: str = ""

    @property
    def types(self) -> list[str]:
        return [p if isinstance(p, str) else p["type"] for p in self.parts]

    @property
    def text(self) -> str:
        return "".join(p["delta"] for p in self.parts if p != "[DONE]" and "delta" in p)


def parse(body: str) -> tuple[list[Any], list[str]]:
    """Every line of an SSE body is a comment, a ``data:`` line with one JSON part (or
    ``[DONE]``), or the blank line that ends an event: nothing else."""
    parts: list[Any] = []
    comments: list[str] = []
    for event in body.replace("\r\n", "\n").split("\n\n"):
        for line in event.split("\n"):
            if not line:
                continue
            if line.startswith(":"):
                comments.append(line)
                continue
            assert line.startswith("data: "), f"not a data line: {line!r}"
            assert event.count("\n") == 0, f"a part of more than one line: {event!r}"
            data = line[len("data: ") :]
            parts.append(data if data == "[DONE]" else json.loads(data))
    return parts, comments


async def read(
    c: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None, stop: str = "[DONE]"
) -> Stream:
    """The stream at ``path``, read until its end, or until ``stop`` is in the body."""
    async with c.stream("GET", path, headers=headers) as r:
        got = Stream(r.status_code, r.headers)
        if r.status_code != 200:
            await r.aread()
            got.body = r.text
            return got
        async for chunk in r.aiter_text():
            got.body += chunk
            if stop in got.body:
                break
    body = got.body.replace("\r\n", "\n")
    got.parts, got.comments = parse(body[: body.rindex("\n\n") + 2])
    return got


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(settings)) as base, httpx.AsyncClient(base_url=base) as c:
        yield c


def keyed(settings: Settings, **changes: Any) -> Settings:
    values = {**settings.model_dump(), "api_keys": KEYS, "token_secret": "ui-secret", **changes}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def end_record(c: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    """The ended job's end record, from a short poll of its whole text."""
    page = (await c.get(f"/jobs/{job_id}", params={"limit": 10000})).json()
    assert page["done"], page
    return {k: page[k] for k in ("status", "next_offset", "error", "usage", "sha256")}


async def test_a_finished_job_replays_in_full_with_the_protocols_headers(
    api: httpx.AsyncClient,
) -> None:
    job_id = await new_job(api)
    tokens = await stored(api, job_id)
    end = await end_record(api, job_id)
    got = await read(api, f"/jobs/{job_id}/stream")
    assert got.status == 200
    assert got.headers["content-type"].split(";")[0] == "text/event-stream"
    assert got.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert got.headers["cache-control"] == "no-store"
    assert got.headers["x-accel-buffering"] == "no"
    assert got.parts[:2] == [
        {"type": "start", "messageId": job_id},
        {"type": "text-start", "id": "text"},
    ]
    assert got.parts[-3:] == [
        {"type": "text-end", "id": "text"},
        {"type": "finish", "finishReason": "stop", "messageMetadata": end},
        "[DONE]",
    ]
    deltas = got.parts[2:-3]
    assert deltas and all(set(p) == {"type", "id", "delta"} for p in deltas)
    assert all(p["type"] == "text-delta" and p["id"] == "text" for p in deltas)
    assert got.text == "".join(tokens)
    assert end["sha256"] == hashlib.sha256(got.text.encode()).hexdigest()
    # The text is exact: a token's leading space and its newlines survive an SSE parser.
    assert " " in got.text and "\n" in got.text


async def test_a_running_job_streams_live_from_its_start_with_comment_heartbeats(
    settings: Settings,
) -> None:
    s = tuned(settings, sim_first_token_ms=900, sse_heartbeat_seconds=0.2, sim_tokens_per_second=40)
    async with serve(create_app(s)) as base, httpx.AsyncClient(base_url=base) as c:
        job_id = await new_job(c, length_words=50)
        live = await read(c, f"/jobs/{job_id}/stream")
        tokens = await stored(c, job_id)
        later = await read(c, f"/jobs/{job_id}/stream")
    assert live.comments and set(live.comments) == {": ping"}
    assert live.body.index(": ping") < live.body.index('"text-delta"')
    assert len(live.types) > len(later.types)  # live: a delta per batch as the job wrote it
    assert live.text == later.text == "".join(tokens)  # both from the start
    assert live.parts[-2]["type"] == later.parts[-2]["type"] == "finish"


async def test_a_cancelled_job_ends_with_abort(settings: Settings) -> None:
    s = tuned(settings, sim_tokens_per_second=10)
    async with serve(create_app(s)) as base, httpx.AsyncClient(base_url=base) as c:
        job_id = await new_job(c)
        async with c.stream("GET", f"/jobs/{job_id}/stream") as r:
            body, cancelled = "", False
            async for chunk in r.aiter_text():  # to the stream's end
                body += chunk
                if '"text-delta"' in body and not cancelled:
                    cancelled = (await c.delete(f"/jobs/{job_id}")).status_code == 204
        assert cancelled
        parts, _ = parse(body)
        end = await end_record(c, job_id)
    assert parts[-4:] == [
        {"type": "text-end", "id": "text"},
        {"type": "message-metadata", "messageMetadata": end},
        {"type": "abort", "reason": "cancelled"},
        "[DONE]",
    ]
    assert end["status"] == "cancelled"


async def test_a_failed_job_ends_with_an_error_part_naming_the_cause(
    settings: Settings,
) -> None:
    async with running(ScriptedUpstream()) as upstream:
        frames = [
            *openai_frames(["Half", " way"], done=False)[:3],
            sse({"error": {"message": "boom"}}),
        ]
        upstream.script(Reply(frames=frames))
        s = tuned(settings, openai_base_url=upstream.url + "/v1", upstream_max_retries=1)
        async with serve(create_app(s)) as base, httpx.AsyncClient(base_url=base) as c:
            job_id = await new_job(c, provider="openai")
            got = await read(c, f"/jobs/{job_id}/stream")
            end = await end_record(c, job_id)
    assert end["status"] == "failed" and "boom" in end["error"]
    assert got.parts[-4:] == [
        {"type": "text-end", "id": "text"},
        {"type": "message-metadata", "messageMetadata": end},
        {"type": "error", "errorText": f"review failed: {end['error']}"},
        "[DONE]",
    ]
    assert got.text == "Half way"


async def test_a_draining_server_ends_the_stream_without_finish(settings: Settings) -> None:
    """The client's message stays unfinished; its next resume replays it from another server."""
    app = create_app(tuned(settings, sim_tokens_per_second=10, worker_grace_seconds=0.2))
    async with serve(app) as base, httpx.AsyncClient(base_url=base) as c:
        job_id = await new_job(c)
        async with c.stream("GET", f"/jobs/{job_id}/stream") as r:
            body, drained = "", False
            async with asyncio.timeout(10):
                async for chunk in r.aiter_text():  # to the stream's end
                    body += chunk
                    if '"text-delta"' in body and not drained:
                        app.state.drain()
                        drained = True
    parts, _ = parse(body)
    assert parts[:2] == [
        {"type": "start", "messageId": job_id},
        {"type": "text-start", "id": "text"},
    ]
    assert {p["type"] for p in parts[2:]} == {"text-delta"}  # no end, no [DONE]


async def test_errors_before_the_stream_starts_are_json_answers(api: httpx.AsyncClient) -> None:
    r = await api.get("/jobs/no-such-job/stream")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert set(r.json()) == {"error", "detail"}
    r = await api.get("/jobs/bad%20id/stream")
    assert r.status_code == 422 and "job_id" in r.json()["error"]
    r = await api.post("/jobs/no-such-job/stream")
    assert r.status_code == 405 and r.headers["allow"] == "GET"


async def test_keys_stream_tokens_and_ownership(settings: Settings) -> None:
    s = keyed(settings, sim_tokens_per_second=400)
    async with serve(create_app(s)) as base, httpx.AsyncClient(base_url=base) as c:
        job = (await c.post("/jobs", json=REVIEW, headers=ALICE)).json()
        other = (await c.post("/jobs", json=REVIEW, headers=ALICE)).json()
        path = f"/jobs/{job['id']}/stream"
        link = job["links"]["ui_stream"]
        assert link.startswith(path + "?token=")
        token = link.split("token=")[1]
        other_token = other["links"]["ui_stream"].split("token=")[1]
        assert (await read(c, path)).status == 401
        assert (await read(c, path, {"Authorization": "Bearer key-mallory"})).status == 401
        assert (await read(c, path, BOB)).status == 404  # another key's job
        assert (await read(c, path, {"Authorization": f"Bearer {other_token}"})).status == 404
        owner = await read(c, path, ALICE)
        by_link = await read(c, link)
        by_bearer = await read(c, path, {"Authorization": f"Bearer {token}"})
    for got in (owner, by_link, by_bearer):
        assert got.status == 200 and got.types[-2:] == ["finish", "[DONE]"]
    assert owner.text == by_link.text == by_bearer.text


async def test_open_streams_count_against_the_keys_quota(settings: Settings) -> None:
    s = keyed(settings, max_streams_per_key=1, sim_tokens_per_second=5.0)
    async with serve(create_app(s)) as base, httpx.AsyncClient(base_url=base) as c:
        job = (await c.post("/jobs", json=REVIEW, headers=ALICE)).json()
        path = f"/jobs/{job['id']}/stream"
        async with c.stream("GET", path, headers=ALICE) as first:
            assert first.status_code == 200
            second = await read(c, path, ALICE)
            assert second.status == 429 and second.headers["retry-after"]
            async with c.stream("GET", f"/jobs/{job['id']}/events", headers=ALICE) as sse:
                assert sse.status_code == 429  # one quota for every mode
        # The stream closed: the key may open another, once the server has seen it go.
        async with asyncio.timeout(5):
            while True:
                async with c.stream("GET", path, headers=ALICE) as again:
                    if again.status_code == 200:
                        break
                    assert again.status_code == 429
                await asyncio.sleep(0.05)


async def test_a_stream_counts_against_the_connection_cap(settings: Settings) -> None:
    s = tuned(settings, max_open_connections=1, sim_tokens_per_second=5.0, worker_grace_seconds=0.2)
    async with serve(create_app(s), **server_options(s)) as base:
        async with httpx.AsyncClient(base_url=base) as c, httpx.AsyncClient(base_url=base) as d:
            job_id = await new_job(c)
            async with c.stream("GET", f"/jobs/{job_id}/stream") as r:
                assert r.status_code == 200
                refused = await d.get("/healthz")
                assert refused.status_code == 503
                assert "REVIEWSTREAM_MAX_OPEN_CONNECTIONS" in refused.json()["error"]
            assert (await d.get("/healthz")).status_code == 200


async def test_the_document_declares_the_stream_and_its_json_errors(
    api: httpx.AsyncClient,
) -> None:
    spec = (await api.get("/openapi.json")).json()
    answers = spec["paths"]["/jobs/{job_id}/stream"]["get"]["responses"]
    assert list(answers.pop("200")["content"]) == ["text/event-stream"]
    assert {"401", "404", "422", "429", "503"} <= set(answers)
    links = spec["components"]["schemas"]["Links"]
    assert "ui_stream" in links["required"]


def test_parts_of_a_changed_producer_are_transient_data_parts() -> None:
    notice = JobNotice(status=JobStatus.RUNNING, attempt=2, offset=15)
    assert ui_status(notice) == ui_stream_part(notice)
    assert json.loads(ui_status(notice)[len(b"data: ") :]) == {
        "type": "data-status",
        "data": {"status": "running", "attempt": 2, "offset": 15, "reason": None, "reset": False},
        "transient": True,
    }


def test_a_batch_is_one_delta_encoded_once() -> None:
    batch = Batch(3, [" line", "\n\n", " two"], [1.0, 1.0, 1.0])
    part = ui_text_delta(batch)
    assert part == b'data: {"type":"text-delta","id":"text","delta":" line\\n\\n two"}\n\n'
    assert ui_stream_part(batch) is part  # cached on the batch: one encoding per batch


@pytest.mark.parametrize(
    ("status", "error", "last"),
    [
        (JobStatus.DONE, None, b'{"type":"finish","finishReason":"stop","messageMetadata":'),
        (JobStatus.FAILED, "boom", b'{"type":"error","errorText":"review failed: boom"}'),
        (JobStatus.CANCELLED, None, b'{"type":"abort","reason":"cancelled"}'),
    ],
)
def test_each_end_closes_the_text_part_then_says_how_it_ended(
    status: JobStatus, error: str | None, last: bytes
) -> None:
    events = ui_end(JobEnd(status=status, next_offset=4, error=error)).split(b"\n\n")
    assert events[0] == b'data: {"type":"text-end","id":"text"}'
    assert events[-3:] == [events[-3], b"data: [DONE]", b""]
    assert events[-3].startswith(b"data: " + last)
    assert ui_error("storage unavailable").endswith(
        b'data: {"type":"error","errorText":"storage unavailable"}\n\ndata: [DONE]\n\n'
    )
