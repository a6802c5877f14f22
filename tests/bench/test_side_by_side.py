"""``benchmarks/side_by_side.py --peer durable-streams``: the peer's followers, producer and run,
against a loopback server that speaks the Durable Streams protocol the way its Node reference
server does (PROTOCOL.md sections 5.1-5.8, 8 and 10.1; the reference server's wire format as
read in packages/server/src/server.ts), and the script's refusal when the peer cannot run.

The real Node server is never installed or started here: that is the benchmark's job, not CI's.
The side-by-side lives in ``benchmarks/`` (scripts, not a package): its modules are imported by
name from there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from reviewstream.bench.conn import Endpoint
from reviewstream.bench.followers import FollowOptions, JobHandle, Trace, follow
from reviewstream.bench.plan import Scenario, ServerConfig
from reviewstream.bench.server import System
from reviewstream.bench.stats import run_summary

sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))
import side_by_side
from peers import default_dir, durable_streams
from peers.durable_streams import FOLLOWERS, produce, run_load, token_message
from side_by_side import compare, judge

TOKENS = [" The", " review", " covers", " Ada", "'s", " work", ".", "\n\n", " Great", " job", "."]
START = "-1"
ZERO = f"{0:016d}_{0:016d}"


def parse(*argv: str) -> argparse.Namespace:
    return side_by_side.parser().parse_args(list(argv))


# -- a Durable Streams server on loopback --------------------------------------------------------


@dataclass
class Stream:
    content_type: str
    messages: list[tuple[str, list[Any]]] = field(default_factory=list)  # (offset after, values)
    closed: bool = False
    tail: str = ZERO
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def after(self, offset: str) -> list[tuple[str, list[Any]]]:
        if offset == START:
            return list(self.messages)
        return [m for m in self.messages if m[0] > offset]

    def append(self, values: list[Any], size: int) -> None:
        position = int(self.tail.split("_")[1]) + size
        self.tail = f"{0:016d}_{position:016d}"
        self.messages.append((self.tail, values))
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass
class Seen:
    method: str
    target: str
    status: int = 0


class LoopbackStreams:
    """Durable Streams over HTTP/1.1 keep-alive, as the reference server answers:

    - offsets ``%016d_%016d``, ``-1`` the beginning; ``Stream-Next-Offset`` on every answer;
    - long poll: ``200`` with the messages as a JSON array, at once when the client is behind
      (from ``-1`` on an empty stream too: ``[]``), else held until an append (``200``), the
      timeout (``204``) or the closure (``204`` + ``Stream-Closed``); ``Stream-Cursor`` on each,
      bumped past a client's cursor that is not behind the server's interval;
    - SSE (chunked): ``event: data`` per message then one ``event: control`` with
      ``streamNextOffset``, ``streamCursor``, ``upToDate``; ``streamClosed`` ends the response.

    Two deviations the protocol allows, to test the client: ``sse_batch`` sends what is stored
    as one ``data`` event whose JSON array spans several ``data:`` lines (section 5.8's
    example), and ``sse_close_after`` closes an SSE response after that many control events
    (servers should close them about every 60 s; clients must resume from the last control).
    """

    def __init__(
        self,
        *,
        long_poll_timeout: float = 30.0,
        sse_batch: bool = False,
        sse_close_after: int | None = None,
    ) -> None:
        self.long_poll_timeout = long_poll_timeout
        self.sse_batch = sse_batch
        self.sse_close_after = sse_close_after
        self.streams: dict[str, Stream] = {}
        self.seen: list[Seen] = []
        self.minted_offsets: set[str] = {ZERO}
        self.minted_cursors: set[str] = set()
        self.hidden: set[int] = set()
        self.batches = 0
        self.interval = 4242
        self._handlers: set[asyncio.Task[Any]] = set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.close()
            for task in self._handlers:
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await server.wait_closed()

    def live(self, messages: list[tuple[str, list[Any]]]) -> list[tuple[str, list[Any]]]:
        """What live reads deliver: all but the token messages ``hidden`` (a lossy server)."""
        if not self.hidden:
            return messages
        return [
            (offset, [v for v in values if v.get("offset") not in self.hidden])
            for offset, values in messages
        ]

    def cursor(self, client: str | None) -> str:
        value = self.interval
        if client is not None and int(client) >= value:
            value = int(client) + 17  # "jitter": strictly past the client's cursor
        self.minted_cursors.add(str(value))
        return str(value)

    def next_offset(self, offset: str) -> str:
        self.minted_offsets.add(offset)
        return offset

    # -- HTTP ------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                line, *lines = head.decode("latin-1").split("\r\n")
                method, target, _ = line.split(" ")
                fields = (h.partition(":") for h in lines if h)
                headers = {k.strip().lower(): v.strip() for k, _, v in fields}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                seen = Seen(method, target)
                self.seen.append(seen)
                keep = await self._route(seen, headers, body, writer)
                if not keep:
                    return
        except asyncio.CancelledError:
            pass  # the test is over
        finally:
            self._handlers.discard(task)
            writer.close()

    def _answer(
        self, seen: Seen, writer: asyncio.StreamWriter, status: int, fields: dict[str, str],
        body: bytes = b"",
    ) -> None:  # fmt: skip
        seen.status = status
        reason = {200: "OK", 201: "Created", 204: "No Content"}.get(status, "Error")
        head = [f"HTTP/1.1 {status} {reason}", "access-control-allow-origin: *"]
        head += [f"{k}: {v}" for k, v in fields.items()]
        if status != 204:
            head.append(f"content-length: {len(body)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)

    async def _route(
        self, seen: Seen, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        url = urlsplit(seen.target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        stream = self.streams.get(url.path)
        if seen.method == "PUT":
            self.streams[url.path] = Stream(headers.get("content-type", "application/octet-stream"))
            self._answer(seen, writer, 201, {"Stream-Next-Offset": ZERO})
        elif stream is None:
            self._answer(seen, writer, 404, {"content-type": "text/plain"}, b"Stream not found")
        elif seen.method == "POST":
            closing = headers.get("stream-closed", "").lower() == "true"
            if stream.closed:
                self._answer(seen, writer, 409, {"Stream-Closed": "true"})
                return True
            if body:
                value = json.loads(body)
                stream.append(value if isinstance(value, list) else [value], len(body))
            fields = {"Stream-Next-Offset": self.next_offset(stream.tail)}
            if closing:
                stream.closed = True
                stream.changed.set()
                fields["Stream-Closed"] = "true"
            self._answer(seen, writer, 204, fields)
        elif query.get("live") == "long-poll":
            await self._long_poll(seen, stream, query, writer)
        elif query.get("live") == "sse":
            await self._sse(seen, stream, query, writer)
            return False
        else:  # a catch-up read
            offset = query.get("offset", START)
            fields = {"content-type": "application/json", "Stream-Up-To-Date": "true"}
            fields["Stream-Next-Offset"] = self.next_offset(stream.tail)
            if stream.closed:
                fields["Stream-Closed"] = "true"
            self._answer(seen, writer, 200, fields, _array(stream.after(offset)))
        await writer.drain()
        return True

    async def _long_poll(
        self, seen: Seen, stream: Stream, query: dict[str, str], writer: asyncio.StreamWriter
    ) -> None:
        offset, cursor = query["offset"], query.get("cursor")
        messages = stream.after(offset)
        if not messages and offset == stream.tail:
            if stream.closed:
                fields = {"Stream-Next-Offset": self.next_offset(stream.tail)}
                fields |= {"Stream-Up-To-Date": "true", "Stream-Closed": "true"}
                self._answer(seen, writer, 204, fields)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stream.changed.wait(), self.long_poll_timeout)
            messages = stream.after(offset)
            if not messages:
                fields = {"Stream-Next-Offset": self.next_offset(offset)}
                fields |= {"Stream-Up-To-Date": "true", "Stream-Cursor": self.cursor(cursor)}
                if stream.closed:
                    fields["Stream-Closed"] = "true"
                self._answer(seen, writer, 204, fields)
                return
        next_offset = messages[-1][0] if messages else stream.tail
        fields = {
            "content-type": "application/json",
            "Stream-Next-Offset": self.next_offset(next_offset),
            "Stream-Cursor": self.cursor(cursor),
            "Stream-Up-To-Date": "true",
        }
        if stream.closed and next_offset == stream.tail:
            fields["Stream-Closed"] = "true"
        self._answer(seen, writer, 200, fields, _array(self.live(messages)))

    async def _sse(
        self, seen: Seen, stream: Stream, query: dict[str, str], writer: asyncio.StreamWriter
    ) -> None:
        seen.status = 200
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )

        def send(text: str) -> None:
            data = text.encode()
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        offset, cursor, controls = query["offset"], query.get("cursor"), 0
        try:
            while True:
                messages = self.live(stream.after(offset))
                if messages and self.sse_batch and len(messages) > 1:
                    values = [v for _, vs in messages for v in vs]
                    lines = ["["] + [json.dumps(v) + "," for v in values[:-1]]
                    lines += [json.dumps(values[-1]), "]"]
                    send("event: data\n" + "".join(f"data:{x}\n" for x in lines) + "\n")
                    self.batches += 1
                else:
                    for _, values in messages:
                        send(f"event: data\ndata:{json.dumps(values)}\n\n")
                if messages:
                    offset = messages[-1][0]
                control: dict[str, Any] = {"streamNextOffset": self.next_offset(offset)}
                if stream.closed and offset == stream.tail:
                    control["streamClosed"] = True
                    send(f"event: control\ndata:{json.dumps(control)}\n\n")
                    break
                control |= {"streamCursor": self.cursor(cursor), "upToDate": True}
                send(f"event: control\ndata:{json.dumps(control)}\n\n")
                await writer.drain()
                controls += 1
                if self.sse_close_after is not None and controls >= self.sse_close_after:
                    break
                if not stream.after(offset) and not stream.closed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stream.changed.wait(), self.long_poll_timeout)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            pass


def _array(messages: list[tuple[str, list[Any]]]) -> bytes:
    return json.dumps([v for _, values in messages for v in values]).encode()


# -- helpers --------------------------------------------------------------------------------------


async def _put(base_url: str, path: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        response = await client.put(path, headers={"Content-Type": "application/json"})
    assert response.status_code == 201


async def _follow(mode: str, base_url: str, path: str) -> Trace:
    trace = Trace(mode, JobHandle(path, time.time()))
    await asyncio.wait_for(
        follow(mode, Endpoint.from_url(base_url), trace, FollowOptions(), FOLLOWERS), 20
    )
    return trace


async def _produce(
    base_url: str, path: str, tokens: list[str], delay: float, rate: float = 200.0
) -> list[str]:
    errors: list[str] = []
    loop = asyncio.get_running_loop()
    appended = await produce(
        Endpoint.from_url(base_url), path, tokens, start_at=loop.time() + delay, rate=rate,
        append_ms=[], errors=errors,
    )  # fmt: skip
    assert appended == len(tokens), errors
    return errors


def _live_reads(server: LoopbackStreams, path: str) -> list[tuple[dict[str, str], int]]:
    reads = []
    for seen in server.seen:
        url = urlsplit(seen.target)
        if seen.method == "GET" and url.path == path and "live" in url.query:
            reads.append(({k: v[0] for k, v in parse_qs(url.query).items()}, seen.status))
    return reads


# -- the followers --------------------------------------------------------------------------------


async def test_long_poll_follows_next_offsets_and_cursors_to_the_stream_closed() -> None:
    server = LoopbackStreams(long_poll_timeout=0.15)
    async with server.running() as base_url:
        await _put(base_url, "/s/lp")
        follower = asyncio.create_task(_follow("long_poll", base_url, "/s/lp"))
        # The first token comes after a held poll timed out: a 204 the follower must ride.
        assert await _produce(base_url, "/s/lp", TOKENS, delay=0.4) == []
        trace = await follower

    trace.verify(TOKENS)
    assert trace.error_count == 0, trace.errors
    assert trace.tokens == TOKENS and trace.end_status == "done" and trace.end_next_offset == 11
    assert len(trace.latencies_ms) == len(TOKENS) and all(v >= 0 for v in trace.latencies_ms)
    reads = _live_reads(server, "/s/lp")
    assert reads[0] == ({"live": "long-poll", "offset": "-1"}, 200)  # [] at once, then caught up
    assert "cursor" not in reads[0][0] and all("cursor" in q for q, _ in reads[1:])
    assert any(status == 204 for _, status in reads[:-1]), reads  # a timeout, ridden
    assert {q["offset"] for q, _ in reads[1:]} <= server.minted_offsets  # only what it was given
    assert {q["cursor"] for q, _ in reads[1:]} <= server.minted_cursors
    # Every request but the first starts where the previous answer said.
    assert [q["offset"] for q, _ in reads[1:]] == sorted(q["offset"] for q, _ in reads[1:])
    assert trace.requests == len(reads)


async def test_long_poll_after_a_timeout_echoes_the_new_cursor_at_the_same_offset() -> None:
    server = LoopbackStreams(long_poll_timeout=0.1)
    async with server.running() as base_url:
        await _put(base_url, "/s/idle")
        follower = asyncio.create_task(_follow("long_poll", base_url, "/s/idle"))
        await _produce(base_url, "/s/idle", TOKENS[:2], delay=0.45)
        await follower
    reads = _live_reads(server, "/s/idle")
    timeouts = [i for i, (_, status) in enumerate(reads[:-1]) if status == 204]
    assert len(timeouts) >= 2
    for i in timeouts:
        before, after = reads[i][0], reads[i + 1][0]
        assert after["offset"] == before["offset"]
        # The server's cursor was not behind the client's: it must have moved past it.
        if "cursor" in before:
            assert int(after["cursor"]) > int(before["cursor"])


async def test_sse_joins_data_lines_and_resumes_from_the_last_control_event() -> None:
    server = LoopbackStreams(sse_batch=True, sse_close_after=2)
    async with server.running() as base_url:
        await _put(base_url, "/s/sse")
        producer = asyncio.create_task(_produce(base_url, "/s/sse", TOKENS, delay=0, rate=20))
        await asyncio.sleep(0.18)  # 4 tokens stored: history, sent as one batched event
        trace = await _follow("sse", base_url, "/s/sse")
        await producer

    trace.verify(TOKENS)
    assert trace.error_count == 0, trace.errors
    assert trace.tokens == TOKENS and trace.end_status == "done"
    reads = _live_reads(server, "/s/sse")
    assert len(reads) >= 3 and trace.requests == len(reads)  # closed every 2 controls, resumed
    assert reads[0][0] == {"live": "sse", "offset": "-1"}
    for query, _ in reads[1:]:
        assert query["offset"] in server.minted_offsets and query["cursor"] in server.minted_cursors
    assert reads[1][0]["offset"] != START
    assert server.batches >= 1  # a JSON array over several data: lines was read


@pytest.mark.parametrize("mode", ["long_poll", "sse"])
async def test_a_stream_closed_without_the_end_message_is_an_error(mode: str) -> None:
    server = LoopbackStreams()
    async with server.running() as base_url:
        await _put(base_url, "/s/cut")
        follower = asyncio.create_task(_follow(mode, base_url, "/s/cut"))
        await asyncio.sleep(0.1)
        stream = server.streams["/s/cut"]
        stream.append([json.loads(token_message(0, "a", time.time()))], 10)
        stream.closed = True
        stream.changed.set()
        trace = await follower
    assert trace.tokens == ["a"]
    assert trace.errors == ["the stream closed without the end message"]
    assert trace.end_status == "closed"


@pytest.mark.parametrize("mode", ["long_poll", "sse"])
async def test_a_missing_stream_is_an_error_not_a_hang(mode: str) -> None:
    server = LoopbackStreams()
    async with server.running() as base_url:
        trace = await _follow(mode, base_url, "/s/none")
    assert trace.errors and "404" in trace.errors[0]


# -- the producer and a whole run -----------------------------------------------------------------


async def test_producer_appends_each_token_on_schedule_with_its_send_time_then_closes() -> None:
    server = LoopbackStreams()
    async with server.running() as base_url:
        await _put(base_url, "/s/p")
        before = time.time()
        started = asyncio.get_running_loop().time()
        await _produce(base_url, "/s/p", TOKENS, delay=0.05, rate=100)
        took = asyncio.get_running_loop().time() - started
    stream = server.streams["/s/p"]
    assert stream.closed
    values = [v for _, vs in stream.messages for v in vs]
    assert values[-1] == {"end": {"status": "done", "next_offset": len(TOKENS)}}
    tokens = values[:-1]
    assert [m["offset"] for m in tokens] == list(range(len(TOKENS)))
    assert [m["tokens"] for m in tokens] == [[t] for t in TOKENS]
    stamps = [m["ts"][0] for m in tokens]
    assert stamps == sorted(stamps) and stamps[0] >= before + 0.04
    # 11 tokens at 100/s after 50 ms: the end is due at 0.05 + 11 / 100 s.
    assert took >= 0.15
    assert stamps[-1] - stamps[0] >= 0.09


@pytest.mark.parametrize("mode", ["long_poll", "sse"])
async def test_a_peer_run_creates_streams_follows_them_and_checks_what_was_stored(
    mode: str,
) -> None:
    server = LoopbackStreams()
    scenario = Scenario(
        "side-by-side", "alone", ServerConfig(200.0, 0.0, 100.0), (mode,), jobs=2, per_job=3,
        poll_interval=1.0, length_words=50,
    )  # fmt: skip
    async with server.running() as base_url:
        run = await run_load(scenario, System(base_url), TOKENS, tag=f"t-{mode}")
    assert run.errors == []
    assert len(run.traces) == 6 and {t.job.id for t in run.traces} == {
        f"/bench/t-{mode}-0",
        f"/bench/t-{mode}-1",
    }
    for trace in run.traces:
        assert trace.error_count == 0, trace.errors
        assert trace.tokens == TOKENS and trace.live_latencies_ms()  # attached before token 1
    assert run.appended_tokens == 2 * len(TOKENS)
    assert len(run.append_ms) == 2 * (len(TOKENS) + 1)
    summary = run_summary(run)
    assert summary["modes"][mode]["errors"] == 0
    assert summary["modes"][mode]["latency_ms"]["n"] == 6 * len(TOKENS)


async def test_a_peer_run_counts_what_the_server_lost() -> None:
    """A server that stores a token but never delivers it live: each follower lost it."""
    server = LoopbackStreams()
    server.hidden = {3}
    scenario = Scenario(
        "side-by-side", "alone", ServerConfig(200.0, 0.0, 100.0), ("sse",), jobs=1, per_job=2,
        poll_interval=1.0, length_words=50,
    )  # fmt: skip
    async with server.running() as base_url:
        run = await run_load(scenario, System(base_url), TOKENS, tag="lossy")
    assert run.errors == []  # it was stored
    assert [(t.lost, t.error_count) for t in run.traces] == [(1, 1), (1, 1)]


# -- the side-by-side document and the command ----------------------------------------------------


def _side(p50: float, p99: float, errors: int = 0) -> dict[str, Any]:
    return {"latency_ms": {"p50": p50, "p99": p99, "n": 100}, "errors": errors}


def test_targets_are_judged_on_ratios_and_clean_runs() -> None:
    rows = [
        compare("long_poll", 1, 1, 1, _side(0.9, 2.0), _side(0.5, 1.0)),
        compare("long_poll", 100, 10, 10, _side(20.0, 30.0), _side(10.0, 25.0)),
        compare("long_poll", 250, 25, 10, _side(20.0, 30.0, errors=1), _side(10.0, 40.0)),
        compare("sse", 100, 10, 10, _side(1.0, 5.0), _side(2.0, 20.0)),
        compare("sse", 10, 1, 10, _side(1.0, 5.0), _side(2.0, 20.0)),  # no target at 10
    ]
    assert rows[1]["p99_ratio"] == pytest.approx(1.2)
    assert rows[0]["p50_diff_ms"] == pytest.approx(0.4)
    verdicts = {v["target"]: v["met"] for v in judge(rows)}
    assert verdicts == {
        "long_poll p50 within 1 ms of the peer's at 1 follower": True,
        "long_poll p99 at or below the peer's at 100 followers": False,
        "long_poll p99 at or below the peer's at 250 followers": False,  # lower, with errors
        "sse p99 at or below the peer's at 100 followers": True,
    }


def test_peer_defaults_are_the_issues_loads_and_only_long_poll_and_sse() -> None:
    options, peer, peer_dir, version = side_by_side.options_from_args(
        parse("--peer", "durable-streams", "--output", "x")
    )
    assert peer is durable_streams
    assert options.modes == ("long_poll", "sse")
    assert options.followers == (1, 100, 250, 500)
    assert (options.per_job, options.fanout_rate, options.repeat) == (10, 20.0, 1)
    assert version == durable_streams.DEFAULT_VERSION and peer_dir == default_dir()
    quick, *_ = side_by_side.options_from_args(parse("--quick", "--output", "x"))
    assert quick.fanout_rate == 20.0 and quick.followers == (1,)
    assert quick.modes == ("long_poll", "sse")
    with pytest.raises(SystemExit, match="long_poll and sse only, not websocket"):
        side_by_side.options_from_args(parse("--modes", "sse,ws", "--output", "x"))


@pytest.mark.parametrize(
    ("tools", "missing"), [(["node"], "not found: npm"), ([], "not found: node, npm")]
)
def test_peer_without_npm_says_what_is_missing_and_exits_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tools: list[str],
    missing: str,
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in tools:
        found = shutil.which(tool)
        if found is None:  # a stand-in: the check looks for the program, it does not run it
            (bin_dir / tool).write_text("#!/bin/sh\nexit 0\n")
            (bin_dir / tool).chmod(0o755)
        else:
            os.symlink(found, bin_dir / tool)
    monkeypatch.setenv("PATH", str(bin_dir))
    peers, out_dir = tmp_path / "peers", tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        side_by_side.start(
            ["--peer", "durable-streams", "--peer-dir", str(peers), "--output", str(out_dir)]
        )
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert missing in err and "@durable-streams/server@" in err and "Node.js" in err
    assert not out_dir.exists() and not peers.exists()  # nothing installed, nothing started
