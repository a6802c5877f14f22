"""The Python client and ``reviewstream review`` against a real server on 127.0.0.1.

Every mode must yield the job's stored text exactly; a connection cut mid-stream (by a TCP proxy
between client and server) must resume by offset with no gap and no duplicate; API refusals
become ``ClientError`` carrying the API's ``error`` text.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from reviewstream.client import (
    ClientError,
    ConnectionLost,
    End,
    IntegrityError,
    Mode,
    ReviewstreamClient,
    TokenBatch,
)
from reviewstream.client import cli as client_cli
from reviewstream.client._errors import Retry
from reviewstream.client._follow import Cursor
from reviewstream.wire import MODES

from tests.support.cuttable import CuttableProxy
from tests.support.servers import free_port

NAME = "Ada Lovelace"
POINTS = "Led the payments migration; mentors two juniors; needs to delegate more"


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[ReviewstreamClient]:
    async with ReviewstreamClient(base_url, backoff=0.02) as c:
        yield c


async def collect(
    client: ReviewstreamClient, job_id: str, mode: Mode, offset: int = 0, **kw: Any
) -> tuple[list[str], End]:
    """Follow to the end, checking that batches are contiguous from ``offset``."""
    tokens: list[str] = []
    end: End | None = None
    expected = offset
    async with contextlib.aclosing(client.follow(job_id, mode, offset, **kw)) as items:
        async for item in items:
            assert end is None, "nothing may follow the end"
            if isinstance(item, TokenBatch):
                assert item.offset == expected and item.tokens
                assert len(item.ts) == len(item.tokens)
                expected = item.next_offset
                tokens += item.tokens
            else:
                end = item
    assert end is not None
    assert end.next_offset == expected
    return tokens, end


async def stored_text(client: ReviewstreamClient, job_id: str) -> list[str]:
    """The job's whole stored text once it is done, by short poll with a big limit."""
    while not (page := await client.poll(job_id, 0, limit=10_000)).done:
        await asyncio.sleep(0.02)
    assert page.next_offset == len(page.tokens)
    return page.tokens


@pytest.mark.parametrize("mode", MODES)
async def test_every_mode_yields_the_stored_text(client: ReviewstreamClient, mode: Mode) -> None:
    job = await client.create(NAME, POINTS, length_words=80, tone="direct")
    assert job.status == "queued" and job.links["ws"] == f"/jobs/{job.id}/ws"
    tokens, end = await collect(client, job.id, mode, poll_interval=0.02)
    assert end.status == "done" and end.error is None
    assert end.usage is not None and end.usage["output_tokens"] == len(tokens)
    assert tokens == await stored_text(client, job.id)
    assert NAME in "".join(tokens)
    # The end carries the digest the client checked the text against.
    assert end.sha256 == hashlib.sha256("".join(tokens).encode()).hexdigest()


@pytest.mark.parametrize("mode", MODES)
async def test_follow_from_the_middle_starts_there(client: ReviewstreamClient, mode: Mode) -> None:
    job = await client.create(NAME, POINTS, length_words=60)
    full = await stored_text(client, job.id)
    tokens, end = await collect(client, job.id, mode, offset=7, poll_interval=0.02)
    assert tokens == full[7:] and end.next_offset == len(full)


@pytest.mark.parametrize(
    ("have", "batch_offset", "tokens", "fresh"),
    [
        (0, 0, ["a", "b"], ["a", "b"]),  # from the start
        (1, 0, ["a", "b", "c"], ["b", "c"]),  # overlap after a resume: trimmed
        (3, 0, ["a", "b", "c"], None),  # all seen already: nothing
        (3, 3, ["d"], ["d"]),  # exactly where we are
    ],
)
def test_cursor_trims_what_the_client_has(
    have: int, batch_offset: int, tokens: list[str], fresh: list[str] | None
) -> None:
    cursor = Cursor("job", have)
    got = cursor.take(TokenBatch(batch_offset, tokens, [1.0] * len(tokens)))
    assert (got.tokens if got else None) == fresh
    assert cursor.offset == max(have, batch_offset + len(tokens))
    if got:
        assert got.offset == have and len(got.ts) == len(got.tokens)


def test_cursor_proves_the_text_followed_from_the_start() -> None:
    cursor = Cursor("job", 0)
    cursor.take(TokenBatch(0, ["Grüße", " aus"]))
    cursor.take(TokenBatch(1, [" aus", " Wien"]))  # an overlap after a resume: hashed once
    right = hashlib.sha256("Grüße aus Wien".encode()).hexdigest()
    cursor.check(End("done", 3, sha256=right))
    with pytest.raises(IntegrityError, match=f"the server's is {'0' * 64}"):
        cursor.check(End("done", 3, sha256="0" * 64))
    # Followed from the middle, or an end beyond what was delivered: nothing to prove.
    Cursor("job", 5).check(End("done", 5, sha256="0" * 64))
    cursor.check(End("done", 9, sha256="0" * 64))


@pytest.mark.parametrize("mode", MODES)
async def test_follow_raises_when_the_text_does_not_match_its_digest(
    client: ReviewstreamClient, redis_server: str, mode: Mode
) -> None:
    job = await client.create(NAME, POINTS, length_words=50)
    await stored_text(client, job.id)
    redis = aioredis.Redis.from_url(redis_server, decode_responses=True)
    [chunks] = [key async for key in redis.scan_iter(f"*{{{job.id}}}:chunks")]
    await redis.lset(chunks, 3, "tampered")  # storage that no longer matches the end's digest
    await redis.aclose()
    with pytest.raises(IntegrityError, match=f"job {job.id}: the text received has SHA-256"):
        await collect(client, job.id, mode, poll_interval=0.02)


def test_cursor_refuses_a_gap() -> None:
    cursor = Cursor("job", 2)
    with pytest.raises(Retry, match="expected offset 2, got 5"):
        cursor.take(TokenBatch(5, ["x"]))
    assert cursor.offset == 2


@pytest.mark.parametrize("mode", MODES)
async def test_resume_after_cut_connection_has_no_gap_or_duplicate(
    base_url: str, mode: Mode
) -> None:
    proxy = CuttableProxy(int(base_url.rsplit(":", 1)[1]))
    via_proxy = await proxy.start()
    try:
        async with ReviewstreamClient(via_proxy, backoff=0.02) as c:
            job = await c.create(NAME, POINTS, length_words=100)
            tokens: list[str] = []
            end: End | None = None
            cuts = 0
            async with contextlib.aclosing(c.follow(job.id, mode, poll_interval=0.05)) as items:
                async for item in items:
                    if isinstance(item, End):
                        end = item
                        continue
                    assert item.offset == len(tokens)
                    tokens += item.tokens
                    if len(tokens) >= 5 and cuts < 2:
                        cuts += 1
                        proxy.cut()
                        await asyncio.sleep(0.05)  # let the cut land mid-stream
            assert end is not None and end.status == "done"
            assert cuts == 2 and end.next_offset > 30, "the job ended before the cuts"
            assert proxy.accepted >= 3, "the client did not reconnect after the cuts"
            assert tokens == await stored_text(c, job.id)
    finally:
        await proxy.aclose()


async def test_gives_up_after_bounded_retries() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with ReviewstreamClient(dead, max_retries=2, backoff=0.01) as c:
        with pytest.raises(ConnectionLost, match="3 times in a row at offset 4"):
            async with contextlib.aclosing(c.follow("abc", "sse", offset=4)) as items:
                async for _ in items:
                    pass


async def test_invalid_input_is_client_error_with_api_message(client: ReviewstreamClient) -> None:
    with pytest.raises(ClientError) as info:
        await client.create("", POINTS)
    assert info.value.status == 422
    assert "employee_name" in info.value.message and "at least 1 character" in info.value.message
    with pytest.raises(ClientError) as info:
        await client.create(NAME, POINTS, model="gpt-17")
    assert info.value.status == 422 and "gpt-17" in info.value.message


@pytest.mark.parametrize("mode", MODES)
async def test_unknown_job_is_404_in_every_mode(client: ReviewstreamClient, mode: Mode) -> None:
    with pytest.raises(ClientError) as info:
        await collect(client, "does-not-exist", mode)
    assert info.value.status == 404
    assert "not found" in info.value.message


async def test_cancel_ends_the_stream_cancelled_and_twice_is_409(
    client: ReviewstreamClient,
) -> None:
    job = await client.create(NAME, POINTS, length_words=300)
    tokens: list[str] = []
    end: End | None = None
    cancelled = False
    async with contextlib.aclosing(client.follow(job.id, "websocket")) as items:
        async for item in items:
            if isinstance(item, TokenBatch):
                tokens += item.tokens
                if len(tokens) >= 3 and not cancelled:
                    cancelled = True
                    await client.cancel(job.id)
            else:
                end = item
    assert end is not None and end.status == "cancelled"
    assert end.next_offset == len(tokens) < 300
    with pytest.raises(ClientError) as info:
        await client.cancel(job.id)
    assert info.value.status == 409 and "cancelled" in info.value.message


async def test_websocket_mode_without_websockets_says_what_to_install(
    client: ReviewstreamClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "websockets.asyncio.client", None)
    with pytest.raises(ImportError, match="pip install websockets"):
        await collect(client, "abc", "websocket")


def cli_args(base_url: str, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    client_cli.add_arguments(parser)
    return parser.parse_args(["--url", base_url, *argv])


@pytest.mark.parametrize("mode", ["sse", "short_poll"])
async def test_cli_prints_the_review_and_a_summary(
    base_url: str, client: ReviewstreamClient, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    args = cli_args(base_url, "--name", NAME, "--points", POINTS, "--length", "60", "--mode", mode)
    args.poll_interval = 0.02
    code = await asyncio.to_thread(client_cli.run, args)
    out, err = capsys.readouterr()
    assert code == 0, err
    job_id = err.rsplit("job ", 1)[1].split(")")[0]
    stored = await stored_text(client, job_id)
    assert out == "".join(stored) + "\n"
    assert err.startswith(f"done: {len(stored)} tokens, ttft ")
    assert f"({mode}, job {job_id})" in err


async def test_cli_rejected_input_exits_nonzero_with_api_error(
    base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = cli_args(base_url, "--name", "", "--points", POINTS)
    assert await asyncio.to_thread(client_cli.run, args) == client_cli.EXIT_REFUSED
    out, err = capsys.readouterr()
    assert out == ""
    assert "error: invalid request: body.employee_name" in err
