"""Durable Streams written by others (``/v1/stream/{path}``) on a real uvicorn: create, append,
close, delete, idempotent producers, exact bytes, JSON mode, the append limit, keys, CORS."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from reviewstream.settings import Settings
from reviewstream.streams import offsets
from reviewstream.web import create_app, server_options

from tests.support.live import tuned
from tests.support.servers import serve
from tests.support.slots import SlotCheck
from tests.web.test_durable_streams import parse_sse, read_sse

TEXT = {"Content-Type": "text/plain"}


async def test_create_append_read_and_close(server: tuple[str, httpx.AsyncClient]) -> None:
    _, c = server
    r = await c.put("/v1/stream/docs/a", content=b"hello", headers=TEXT)
    assert r.status_code == 201 and r.headers["stream-next-offset"] == offsets.encode(1)
    assert r.headers["location"].endswith("/v1/stream/docs/a")
    assert (await c.put("/v1/stream/docs/a", headers=TEXT)).status_code == 200  # same config
    assert (await c.put("/v1/stream/docs/a", headers={"Content-Type": "a/b"})).status_code == 409
    r = await c.post("/v1/stream/docs/a", content=b" world", headers=TEXT)
    assert r.status_code == 204 and r.headers["stream-next-offset"] == offsets.encode(2)
    r = await c.get("/v1/stream/docs/a")
    assert r.content == b"hello world" and r.headers["stream-up-to-date"] == "true"
    assert "stream-closed" not in r.headers and "stream-job-status" not in r.headers
    assert (
        await c.post("/v1/stream/docs/a", content=b"x", headers={"Content-Type": "a/b"})
    ).status_code == 409
    assert (await c.post("/v1/stream/docs/a", headers=TEXT)).status_code == 400  # empty body
    r = await c.post("/v1/stream/docs/a", headers={"Stream-Closed": "true"})
    assert r.status_code == 204 and r.headers["stream-closed"] == "true"
    r = await c.post("/v1/stream/docs/a", headers={"Stream-Closed": "true"})
    assert r.status_code == 204  # closing again is idempotent
    r = await c.post("/v1/stream/docs/a", content=b"late", headers=TEXT)
    assert r.status_code == 409 and r.headers["stream-closed"] == "true"
    assert r.headers["stream-next-offset"] == offsets.encode(2)
    r = await c.get("/v1/stream/docs/a", params={"offset": offsets.encode(2)})
    assert r.content == b"" and r.headers["stream-closed"] == "true"
    r = await c.head("/v1/stream/docs/a")
    assert r.headers["stream-closed"] == "true" and r.headers["content-type"] == "text/plain"
    assert (await c.delete("/v1/stream/docs/a")).status_code == 204
    assert (await c.get("/v1/stream/docs/a")).status_code == 404
    assert (await c.delete("/v1/stream/docs/a")).status_code == 404
    assert (await c.post("/v1/stream/nope", content=b"x", headers=TEXT)).status_code == 404


async def test_bytes_are_exact_in_catch_up_and_base64_sse(
    server: tuple[str, httpx.AsyncClient],
) -> None:
    _, c = server
    every_byte = bytes(range(256)) * 3
    octets = {"Content-Type": "application/octet-stream"}
    assert (await c.put("/v1/stream/bin", content=every_byte, headers=octets)).status_code == 201
    await c.post("/v1/stream/bin", content=b"\x00\xff", headers=octets)
    assert (await c.get("/v1/stream/bin")).content == every_byte + b"\x00\xff"
    await c.post("/v1/stream/bin", headers={"Stream-Closed": "true"})
    r, body = await read_sse(c, "/v1/stream/bin", params={"offset": "-1", "live": "sse"})
    assert r.headers["stream-sse-data-encoding"] == "base64"
    data = [base64.b64decode(d.replace("\n", "")) for k, d, _ in parse_sse(body) if k == "data"]
    assert b"".join(data) == every_byte + b"\x00\xff"


async def test_json_mode_flattens_one_level_and_reads_an_array(
    server: tuple[str, httpx.AsyncClient],
) -> None:
    _, c = server
    js = {"Content-Type": "application/json"}
    assert (await c.put("/v1/stream/j", content=b"[]", headers=js)).status_code == 201
    await c.post("/v1/stream/j", content=b'{"a": 1}', headers=js)
    await c.post("/v1/stream/j", content=b'[[1, 2], {"b": "\xc3\xa9"}]', headers=js)
    r = await c.get("/v1/stream/j")
    assert r.json() == [{"a": 1}, [1, 2], {"b": "é"}]
    assert r.headers["stream-next-offset"] == offsets.encode(3)
    assert (await c.post("/v1/stream/j", content=b"[]", headers=js)).status_code == 400
    assert (await c.post("/v1/stream/j", content=b"{nope", headers=js)).status_code == 400
    assert (await c.get("/v1/stream/j", params={"offset": "now"})).content == b"[]"


async def test_sequences_and_idempotent_producers(server: tuple[str, httpx.AsyncClient]) -> None:
    _, c = server
    await c.put("/v1/stream/p", headers=TEXT)

    async def post(body: str, **headers: str) -> httpx.Response:
        return await c.post("/v1/stream/p", content=body.encode(), headers={**TEXT, **headers})

    assert (await post("a", **{"Stream-Seq": "0001"})).status_code == 204
    assert (await post("b", **{"Stream-Seq": "0001"})).status_code == 409
    assert (await post("b", **{"Stream-Seq": "0002"})).status_code == 204

    def producer(epoch: int, seq: int) -> dict[str, str]:
        return {"Producer-Id": "w", "Producer-Epoch": str(epoch), "Producer-Seq": str(seq)}

    r = await post("c", **producer(0, 0))
    assert r.status_code == 200 and r.headers["producer-epoch"] == "0"
    r = await post("c", **producer(0, 0))
    assert r.status_code == 204 and r.headers["producer-seq"] == "0"  # a retry: stored once
    r = await post("e", **producer(0, 2))
    assert r.status_code == 409 and r.headers["producer-expected-seq"] == "1"
    assert (await post("d", **producer(0, 1))).status_code == 200
    assert (await post("x", **producer(1, 1))).status_code == 400  # a new epoch starts at 0
    assert (await post("f", **producer(1, 0))).status_code == 200
    r = await post("zombie", **producer(0, 2))
    assert r.status_code == 403 and r.headers["producer-epoch"] == "1"
    assert (await post("g", **{"Producer-Id": "w"})).status_code == 400  # all three or none
    r = await post("h", **producer(1, 1), **{"Stream-Closed": "true"})
    assert r.status_code == 200 and r.headers["stream-closed"] == "true"
    r = await post("h", **producer(1, 1), **{"Stream-Closed": "true"})
    assert r.status_code == 204 and r.headers["stream-closed"] == "true"  # the same close
    assert (await c.get("/v1/stream/p")).text == "abcdfh"


async def test_live_readers_follow_appends_with_leading_spaces_exactly(
    server: tuple[str, httpx.AsyncClient],
) -> None:
    _, c = server
    await c.put("/v1/stream/words", headers=TEXT)
    words = ["Hello", " wide", "  world", "\n next", " line\n", " end"]
    sse = asyncio.create_task(
        read_sse(c, "/v1/stream/words", params={"offset": "-1", "live": "sse"})
    )
    poll = asyncio.create_task(
        c.get("/v1/stream/words", params={"offset": "-1", "live": "long-poll"})
    )
    await asyncio.sleep(0.2)
    for i, word in enumerate(words):
        close = {"Stream-Closed": "true"} if i == len(words) - 1 else {}
        await c.post("/v1/stream/words", content=word.encode(), headers={**TEXT, **close})
        await asyncio.sleep(0.02)
    r = await poll
    assert r.status_code == 200 and r.text == "Hello"
    _, body = await sse
    events = parse_sse(body)
    assert "".join(d for k, d, _ in events if k == "data") == "".join(words)
    assert '"streamClosed":true' in events[-1][1] and "jobStatus" not in events[-1][1]


async def test_an_append_is_bounded_by_its_own_limit(settings: Settings) -> None:
    small = tuned(settings, max_append_bytes=150_000)
    async with serve(create_app(small)) as base, httpx.AsyncClient(base_url=base) as c:
        await c.put("/v1/stream/big", headers=TEXT)
        big = b"x" * 100 * 1024  # above the API's 64 KiB request limit, below this one
        assert (await c.post("/v1/stream/big", content=big, headers=TEXT)).status_code == 204

        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(20):
                yield b"y" * 10_000

        r = await c.post("/v1/stream/big", content=chunked(), headers=TEXT)
        assert r.status_code == 413
        assert (await c.get("/v1/stream/big")).content == big


async def test_keys_own_their_streams_and_jobs_are_read_only(settings: Settings) -> None:
    keyed = Settings(
        _env_file=None,  # type: ignore[call-arg]
        **{**settings.model_dump(), "api_keys": "alice:key-alice,bob:key-bob"},
    )
    alice = {"Authorization": "Bearer key-alice", **TEXT}
    bob = {"Authorization": "Bearer key-bob", **TEXT}
    async with serve(create_app(keyed), **server_options(keyed)) as base:
        async with httpx.AsyncClient(base_url=base) as c:
            assert (await c.put("/v1/stream/k", headers=TEXT)).status_code == 401
            assert (await c.put("/v1/stream/k", content=b"a", headers=alice)).status_code == 201
            assert (await c.post("/v1/stream/k", content=b"b", headers=bob)).status_code == 404
            assert (await c.get("/v1/stream/k", headers=bob)).status_code == 404
            assert (await c.delete("/v1/stream/k", headers=bob)).status_code == 404
            assert (await c.get("/v1/stream/k", headers=alice)).content == b"a"
            r = await c.post(
                "/jobs",
                json={"employee_name": "A", "employee_review_points": "x"},
                headers={"Authorization": "Bearer key-alice"},
            )
            token = r.json()["links"]["durable_stream"].partition("token=")[2]
            as_token = {"Authorization": f"Bearer {token}", **TEXT}
            assert (await c.put("/v1/stream/t", headers=as_token)).status_code == 403
            job = f"/v1/stream/jobs/{r.json()['id']}"
            for method in ("PUT", "POST", "DELETE"):
                assert (await c.request(method, job, headers=alice)).status_code == 405


async def test_cors_any_origin_unless_restricted(settings: Settings) -> None:
    preflight = {
        "Origin": "https://elsewhere.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "producer-id, stream-seq, if-none-match",
    }
    async with serve(create_app(settings)) as base, httpx.AsyncClient(base_url=base) as c:
        r = await c.options("/v1/stream/x", headers=preflight)
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"
        allowed = r.headers["access-control-allow-headers"].lower()
        assert "producer-id" in allowed and "if-none-match" in allowed
        await c.put("/v1/stream/x", headers=TEXT)
        r = await c.get("/v1/stream/x", headers={"Origin": "https://elsewhere.example"})
        assert r.headers["access-control-allow-origin"] == "*"
        assert "stream-next-offset" in r.headers["access-control-expose-headers"].lower()
    only = tuned(settings, cors_origins="https://app.example")
    async with serve(create_app(only)) as base, httpx.AsyncClient(base_url=base) as c:
        r = await c.options("/v1/stream/x", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
        r = await c.options("/v1/stream/x", headers={**preflight, "Origin": "https://app.example"})
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = await c.get("/jobs/x", headers={"Origin": "https://app.example"})
        assert r.headers["access-control-allow-origin"] == "https://app.example"  # the app's


async def test_forks_copy_their_prefix_and_hold_their_source(
    server: tuple[str, httpx.AsyncClient],
) -> None:
    _, c = server
    await c.put("/v1/stream/src", content=b"hello", headers=TEXT)
    r = await c.post("/v1/stream/src", content=b" world", headers=TEXT)
    mid = offsets.encode(1)

    def fork_of(source: str, offset: str, sub: int = 0) -> dict[str, str]:
        headers = {"Stream-Forked-From": source, "Stream-Fork-Offset": offset}
        return headers | ({"Stream-Fork-Sub-Offset": str(sub)} if sub else {})

    r = await c.put("/v1/stream/fork", headers=fork_of("/v1/stream/src", mid, 3))
    assert r.status_code == 201 and r.headers["content-type"] == "text/plain"
    assert (await c.get("/v1/stream/fork")).content == b"hello wo"  # the prefix, 3 bytes in
    assert (
        await c.put("/v1/stream/fork", headers=fork_of("/v1/stream/src", mid, 3))
    ).status_code == 200
    assert (
        await c.put("/v1/stream/fork", headers=fork_of("/v1/stream/src", mid))
    ).status_code == 409
    await c.post("/v1/stream/fork", content=b"rkers", headers=TEXT)
    await c.post("/v1/stream/src", content=b"!", headers=TEXT)  # the fork does not see it
    assert (await c.get("/v1/stream/fork")).content == b"hello workers"
    bad = fork_of("/v1/stream/src", offsets.encode(9))
    assert (await c.put("/v1/stream/f2", headers=bad)).status_code == 400
    assert (
        await c.put("/v1/stream/f2", headers=fork_of("/v1/stream/none", mid))
    ).status_code == 404
    other = {**fork_of("/v1/stream/src", mid), "Content-Type": "application/json"}
    assert (await c.put("/v1/stream/f2", headers=other)).status_code == 409
    # Deleting a source that a fork holds: gone (410) and its path taken, until the fork goes.
    assert (await c.delete("/v1/stream/src")).status_code == 204
    assert (await c.get("/v1/stream/src")).status_code == 410
    assert (await c.put("/v1/stream/src", headers=TEXT)).status_code == 409
    assert (await c.put("/v1/stream/f3", headers=fork_of("/v1/stream/src", mid))).status_code == 409
    assert (await c.get("/v1/stream/fork")).content == b"hello workers"
    assert (await c.delete("/v1/stream/fork")).status_code == 204
    assert (await c.get("/v1/stream/src")).status_code == 404


@pytest.fixture
def slot_check(redis_url: str) -> Iterator[SlotCheck]:
    check = SlotCheck(redis_url)
    with check.watching():
        yield check
    check.close()


async def test_every_stream_write_and_read_touches_one_slot(
    settings: Settings, slot_check: SlotCheck
) -> None:
    """Create, append, close, fork (source read, reference, copy), delete and the cascade: each
    one script or transaction on one stream's slot, as Redis Cluster needs."""
    async with serve(create_app(settings)) as base, httpx.AsyncClient(base_url=base) as c:
        await c.put("/v1/stream/one", content=b"a", headers={**TEXT, "Stream-TTL": "60"})
        await c.post("/v1/stream/one", content=b"b", headers=TEXT)
        await c.get("/v1/stream/one", params={"offset": "-1", "live": "long-poll"})
        fork = {"Stream-Forked-From": "/v1/stream/one", "Stream-Fork-Offset": offsets.encode(1)}
        assert (await c.put("/v1/stream/two", headers=fork)).status_code == 201
        await c.post("/v1/stream/two", headers={"Stream-Closed": "true"})
        await c.head("/v1/stream/two")
        assert (await c.delete("/v1/stream/one")).status_code == 204
        assert (await c.delete("/v1/stream/two")).status_code == 204
        assert (await c.get("/v1/stream/one")).status_code == 404
    assert slot_check.scripts, "no script was watched"
    assert slot_check.violations == []
