"""Jobs as Durable Streams (``/v1/stream/jobs/{id}``) on a real uvicorn: catch-up, HEAD,
long-poll and SSE reads, the offset sentinels, ETags, the protocol's statuses, how a cancelled
job closes, and the same keys and stream tokens as every mode."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from reviewstream.settings import Settings
from reviewstream.streams import offsets
from reviewstream.web import create_app, server_options

from tests.support.live import new_job, stored, tuned
from tests.support.servers import serve


def url(job_id: str) -> str:
    return f"/v1/stream/jobs/{job_id}"


async def finished(c: httpx.AsyncClient, **overrides: Any) -> tuple[str, str]:
    """A job run to its end, and its stored text."""
    job_id = await new_job(c, **overrides)
    return job_id, "".join(await stored(c, job_id))


def parse_sse(text: str) -> list[tuple[str, str, str | None]]:
    """(event, data, id) per event, as a standard SSE parser reads them: one space after
    ``data:`` is dropped, ``data:`` lines are joined by newlines."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        kind, data, event_id = "message", [], None
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                kind = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                event_id = value
        if data:
            events.append((kind, "\n".join(data), event_id))
    return events


async def read_sse(c: httpx.AsyncClient, path: str, **kw: Any) -> tuple[httpx.Response, str]:
    async with c.stream("GET", path, **kw) as r:
        body = "".join([chunk async for chunk in r.aiter_text()])
    return r, body


async def test_a_job_links_its_stream_and_a_late_joiner_reads_it_whole(
    server: tuple[str, httpx.AsyncClient],
) -> None:
    _, c = server
    r = await c.post("/jobs", json={"employee_name": "Ada", "employee_review_points": "x y z"})
    job_id = r.json()["id"]
    assert r.json()["links"]["durable_stream"] == url(job_id)
    text = "".join(await stored(c, job_id))
    count = len(await stored(c, job_id))
    r = await c.get(url(job_id))
    assert r.status_code == 200
    assert r.content == text.encode()  # exact, in one catch-up read
    assert r.headers["content-type"].startswith("text/plain")
    assert r.headers["stream-next-offset"] == offsets.encode(count)
    assert r.headers["stream-up-to-date"] == "true"
    assert r.headers["stream-closed"] == "true"
    assert r.headers["stream-job-status"] == "done"
    assert r.headers["producer-epoch"] == "1"  # the job's attempt
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cross-origin-resource-policy"] == "cross-origin"
    assert (await c.get(url(job_id), params={"offset": "-1"})).content == r.content
    again = await c.get(url(job_id), headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


async def test_offsets_resume_at_the_same_token_as_every_mode(
    server: tuple[str, httpx.AsyncClient],
) -> None:
    _, c = server
    job_id = await new_job(c)
    tokens = await stored(c, job_id)
    for n in (0, 1, len(tokens) // 2, len(tokens), len(tokens) + 3):
        r = await c.get(url(job_id), params={"offset": offsets.encode(n)})
        assert r.status_code == 200
        assert r.text == "".join(tokens[n:])
        assert r.headers["stream-next-offset"] == offsets.encode(max(n, len(tokens)))
        assert r.headers["stream-closed"] == "true"  # every read reaches the end here
    assert offsets.encode(9) < offsets.encode(10) < offsets.encode(100)  # sortable as text


async def test_now_head_and_malformed_offsets(server: tuple[str, httpx.AsyncClient]) -> None:
    _, c = server
    job_id, _ = await finished(c)
    tail = (await c.get(url(job_id))).headers["stream-next-offset"]
    r = await c.get(url(job_id), params={"offset": "now"})
    assert r.status_code == 200 and r.content == b""
    assert r.headers["stream-next-offset"] == tail and "no-store" in r.headers["cache-control"]
    assert "etag" not in r.headers
    r = await c.head(url(job_id))
    assert r.status_code == 200 and r.headers["stream-next-offset"] == tail
    assert r.headers["stream-closed"] == "true" and r.headers["cache-control"] == "no-store"
    for bad in ("0,1", "0 1", "abc", "12", "", "-2", "9" * 16):
        r = await c.get(url(job_id), params={"offset": bad})
        assert r.status_code == 400, bad
        assert r.headers["x-content-type-options"] == "nosniff"
    r = await c.get(f"{url(job_id)}?offset=-1&offset=-1")
    assert r.status_code == 400
    assert (await c.get(url(job_id), params={"live": "sse"})).status_code == 400  # no offset
    assert (await c.get(url("0" * 32))).status_code == 404
    assert (await c.head(url("0" * 32))).status_code == 404
    for method in ("POST", "PUT", "DELETE"):  # a job's stream is read-only
        assert (await c.request(method, url(job_id), content=b"x")).status_code == 405


async def test_long_poll_answers_stored_tokens_new_ones_the_end_or_204(settings: Settings) -> None:
    slow = tuned(settings, sim_tokens_per_second=40, sim_first_token_ms=300)
    async with serve(create_app(slow)) as base, httpx.AsyncClient(base_url=base) as c:
        job_id = await new_job(c, length_words=50)
        r = await c.get(url(job_id), params={"offset": "now", "live": "long-poll"})
        assert r.status_code == 200 and r.content  # waited for the first tokens
        assert r.headers["stream-cursor"] and r.headers["stream-up-to-date"] == "true"
        got, offset = r.content, r.headers["stream-next-offset"]
        while True:
            r = await c.get(url(job_id), params={"offset": offset, "live": "long-poll"})
            if r.status_code == 204:
                break
            assert r.status_code == 200 and r.headers["stream-cursor"]
            got, offset = got + r.content, r.headers["stream-next-offset"]
        assert r.headers["stream-closed"] == "true" and r.headers["stream-up-to-date"] == "true"
        tokens = await stored(c, job_id)
        assert offset == offsets.encode(len(tokens))
        assert b"".join(t.encode() for t in tokens).endswith(got)
        r = await c.get(url(job_id), params={"offset": offset, "live": "long-poll"})
        assert r.status_code == 204 and r.headers["stream-closed"] == "true"  # at once
        waiting = tuned(slow, sim_first_token_ms=5000)
    async with serve(create_app(waiting)) as base, httpx.AsyncClient(base_url=base) as c:
        job_id = await new_job(c)
        params = {"offset": "-1", "live": "long-poll", "timeout": "0.3", "cursor": "1"}
        r = await c.get(url(job_id), params=params)
        assert r.status_code == 204 and r.headers["stream-up-to-date"] == "true"
        assert r.headers["stream-next-offset"] == offsets.encode(0)
        assert "stream-closed" not in r.headers and int(r.headers["stream-cursor"]) > 1
        await c.delete(f"/jobs/{job_id}")


async def test_sse_follows_a_running_job_to_its_closure_with_the_exact_text(
    settings: Settings,
) -> None:
    slow = tuned(settings, sim_tokens_per_second=100)
    async with serve(create_app(slow)) as base, httpx.AsyncClient(base_url=base) as c:
        job_id = await new_job(c, length_words=60)
        r, body = await read_sse(c, url(job_id), params={"offset": "-1", "live": "sse"})
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-content-type-options"] == "nosniff"
        events = parse_sse(body)
        text = "".join(data for kind, data, _ in events if kind == "data")
        tokens = await stored(c, job_id)
        assert text == "".join(tokens)  # leading spaces and newlines kept
        assert any(t.startswith(" ") for t in tokens)
        assert [kind for kind, _, _ in events].count("data") >= 2  # followed live, not at once
        last = events[-1]
        assert last[0] == "control" and '"streamClosed":true' in last[1]
        assert '"jobStatus":"done"' in last[1] and last[2] == offsets.encode(len(tokens))
        assert {kind for kind, _, _ in events} == {"data", "control"}
        # Resume from the middle, by ?offset= and by Last-Event-ID (which wins).
        mid = offsets.encode(len(tokens) // 2)
        expect = "".join(tokens[len(tokens) // 2 :])
        for kw in (
            {"params": {"offset": mid, "live": "sse"}},
            {"params": {"offset": "-1", "live": "sse"}, "headers": {"Last-Event-ID": mid}},
        ):
            _, body = await read_sse(c, url(job_id), **kw)
            assert "".join(d for k, d, _ in parse_sse(body) if k == "data") == expect
        # At the end of a closed stream: one closing control event, then the stream ends.
        _, body = await read_sse(c, url(job_id), params={"offset": "now", "live": "sse"})
        (only,) = parse_sse(body)
        assert only[0] == "control" and '"streamClosed":true' in only[1]


async def test_a_cancelled_job_closes_its_stream_and_says_so(settings: Settings) -> None:
    waiting = tuned(settings, sim_first_token_ms=5000)
    async with serve(create_app(waiting)) as base, httpx.AsyncClient(base_url=base) as c:
        job_id = await new_job(c)
        sse = asyncio.create_task(read_sse(c, url(job_id), params={"offset": "-1", "live": "sse"}))
        poll = asyncio.create_task(c.get(url(job_id), params={"offset": "-1", "live": "long-poll"}))
        await asyncio.sleep(0.3)
        assert (await c.delete(f"/jobs/{job_id}")).status_code == 204
        r = await poll
        assert r.status_code == 204 and r.headers["stream-closed"] == "true"
        assert r.headers["stream-job-status"] == "cancelled"
        _, body = await sse
        events = parse_sse(body)
        assert '"upToDate":true' in events[0][1]  # caught up at once: nothing stored yet
        assert '"streamClosed":true' in events[-1][1] and '"jobStatus":"cancelled"' in events[-1][1]
        r = await c.head(url(job_id))
        assert (
            r.headers["stream-closed"] == "true" and r.headers["stream-job-status"] == "cancelled"
        )


async def test_keys_and_stream_tokens_guard_job_streams(settings: Settings) -> None:
    keyed = Settings(
        _env_file=None,  # type: ignore[call-arg]
        **{**settings.model_dump(), "api_keys": "alice:key-alice,bob:key-bob"},
    )
    async with serve(create_app(keyed), **server_options(keyed)) as base:
        async with httpx.AsyncClient(base_url=base) as c:
            alice = {"Authorization": "Bearer key-alice"}
            r = await c.post(
                "/jobs",
                json={"employee_name": "Ada", "employee_review_points": "x"},
                headers=alice,
            )
            job_id, link = r.json()["id"], r.json()["links"]["durable_stream"]
            assert "token=" in link
            assert (await c.get(url(job_id))).status_code == 401
            bob = await c.get(url(job_id), headers={"Authorization": "Bearer key-bob"})
            assert bob.status_code == 404
            while (r := await c.get(link)).headers.get("stream-closed") != "true":
                await asyncio.sleep(0.05)
            assert r.status_code == 200 and r.content
            token = link.partition("token=")[2]
            by_bearer = await c.get(url(job_id), headers={"Authorization": f"Bearer {token}"})
            assert by_bearer.content == r.content
            assert (await c.get(url(job_id), headers=alice)).content == r.content
            other = await c.post(
                "/jobs",
                json={"employee_name": "Bo", "employee_review_points": "y"},
                headers=alice,
            )
            assert (await c.get(f"{url(other.json()['id'])}?token={token}")).status_code == 404


@pytest.mark.parametrize("live", ["", "long-poll", "sse"])
async def test_an_unknown_job_is_404_in_every_read(
    server: tuple[str, httpx.AsyncClient], live: str
) -> None:
    _, c = server
    params = {"offset": "-1", "live": live} if live else {}
    assert (await c.get(url("f" * 32), params=params)).status_code == 404
