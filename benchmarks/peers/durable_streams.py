"""The Durable Streams protocol's Node reference server (npm ``@durable-streams/server``), in
memory, on loopback: its installation, its followers, and the benchmark as its producer.

**The server.** The package has no command of its own: ``LAUNCHER`` starts a
``DurableStreamTestServer`` (its in-memory store, its defaults otherwise: the long poll's own
timeout, compression only for clients that ask, which the benchmark's client does not).

**The followers** use what reviewstream's use (``reviewstream.bench``'s ``HttpConnection``,
``Poller`` and ``SseReader``, the same arrival stamps, the same ``Trace``) and differ only in
the protocol (PROTOCOL.md of durable-streams/durable-streams, sections 5.7, 5.8, 8 and 10.1):

- **long poll**: ``GET {stream}?cursor=C&live=long-poll&offset=O`` (parameters in lexicographic
  order, as the protocol recommends). A ``200`` carries the messages since ``O`` as a JSON
  array; a ``204`` says the wait timed out. Either way the next request starts at the
  ``Stream-Next-Offset`` header and echoes the ``Stream-Cursor`` header as ``cursor``;
  ``Stream-Closed: true`` is the end of the stream.
- **SSE**: ``GET {stream}?cursor=C&live=sse&offset=O``. ``event: data`` carries a JSON array of
  messages (possibly over several ``data:`` lines), and an ``event: control`` follows with
  ``streamNextOffset``, ``streamCursor``, ``upToDate`` and, at the end, ``streamClosed``. A
  connection the server closes before ``streamClosed`` is opened again from the last control
  event's offset and cursor, as the protocol requires of clients.

Offsets are opaque tokens minted by the server; a follower starts at ``-1`` (the beginning) and
only ever sends back what the server gave it.

**A run** (``run_load``) does what ``reviewstream.bench.runner.run_scenario`` does for
reviewstream, with the same jobs, pace, followers and checks. A job is a stream
``/bench/<tag>-<i>`` created with ``PUT`` (``application/json``); its followers start as soon as
the ``PUT`` returns. A producer in the benchmark plays the simulated model: it waits the model's
time to first token from the ``PUT``, then appends the job's tokens (the very tokens
reviewstream's simulated model writes for the benchmark's request) at the same rate, each due at
a fixed time from the start, one ``POST`` per token carrying ``{"offset": i, "tokens": [token],
"ts": [send time]}`` (the shape of reviewstream's token message, so the same ``Trace`` checks
it); the last ``POST`` carries ``{"end": {"status": "done", "next_offset": n}}`` with
``Stream-Closed: true``. After the run each stream is read back once (a catch-up read from
``-1``, outside the measured window) and every follower's tokens are compared with what the
server stored.

The latency clock is not reviewstream's, and the difference is not in the peer's favour:
reviewstream's ``ts`` is Redis' ``TIME`` inside the append script, once the token reached the
server; the peer has no append time of its own, so its ``ts`` is the producer's ``time.time()``
just before the append request is written, and its latency includes the append's trip into the
server. That trip's round trip is reported (``append_ms``) so the difference can be judged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any
from urllib.parse import quote

import httpx

from reviewstream.bench.conn import Endpoint, HttpConnection
from reviewstream.bench.followers import (
    Follow,
    FollowOptions,
    JobHandle,
    Poller,
    SseReader,
    Trace,
    follow,
)
from reviewstream.bench.plan import Scenario
from reviewstream.bench.runner import Progress, collector_paused, deadline_seconds, wait_followers
from reviewstream.bench.server import System, sample

from . import Install, NodePackage, PeerRun

NAME = "durable-streams"
PACKAGE = "@durable-streams/server"
DEFAULT_VERSION = "0.3.7"
MODES: tuple[str, ...] = ("long_poll", "sse")
CONTENT_TYPE = "application/json"  # of every stream: messages are JSON
NOTES: tuple[str, ...] = (
    "the peer's timestamp: the benchmark's producer, just before it writes the append request "
    "(the peer has no append time): its latency includes the append's trip into the server; "
    "append_ms is that request's round trip",
    "reviewstream's server CPU includes producing (the in-process worker runs the model); the "
    "peer's includes receiving the appends; Redis CPU is reviewstream's, apart",
)
LAUNCHER = """\
// Written by benchmarks/side_by_side.py: start the Durable Streams reference server, in memory.
import { DurableStreamTestServer } from "@durable-streams/server";

const port = Number(process.argv[2]);
const server = new DurableStreamTestServer({ port, host: "127.0.0.1" });
const url = await server.start();
console.log(JSON.stringify({ url, node: process.version }));
process.on("SIGTERM", () => {
  server.stop().finally(() => process.exit(0));
});
"""
_NODE = NodePackage(NAME, PACKAGE, LAUNCHER)
missing_tools = _NODE.missing_tools
missing_message = _NODE.missing_message
ensure_installed = _NODE.ensure_installed
started = _NODE.started


def describe(install: Install) -> dict[str, Any]:
    """The peer's part of the results document."""
    return {
        "name": NAME,
        "package": PACKAGE,
        "version": install.version,
        "node": install.runtime,
        "store": "in-memory",
        "content_type": CONTENT_TYPE,
    }


def title(described: dict[str, Any]) -> str:
    """The peer as the table's heading names it."""
    return (
        f"Durable Streams ({described['package']} {described['version']}, Node "
        f"{described['node']}, in-memory)"
    )


# -- followers -------------------------------------------------------------------------------

STREAM_START = "-1"
# A server that keeps closing an SSE response before the stream's end is broken, not slow.
SSE_RECONNECTS = 20


def read_target(path: str, offset: str, cursor: str | None, live: str) -> str:
    """The request target of a live read from ``offset`` (parameters sorted by name)."""
    query = f"live={live}&offset={quote(offset, safe='')}"
    if cursor is not None:
        query = f"cursor={quote(cursor, safe='')}&{query}"
    return f"{path}?{query}"


def on_messages(trace: Trace, payload: bytes, now: float) -> None:
    """Hand a JSON array of the benchmark's messages to the trace."""
    messages = json.loads(payload)
    if not isinstance(messages, list):
        raise ValueError(f"expected a JSON array of messages, got {payload[:100]!r}")
    for message in messages:
        on_message(trace, message, now)


def on_message(trace: Trace, message: dict[str, Any], now: float) -> None:
    """One message: a token batch or the end."""
    end = message.get("end")
    if end is not None:
        trace.on_end(end["status"], end["next_offset"], now, end.get("error"))
    else:
        trace.on_tokens(message["offset"], message["tokens"], message["ts"], now)


def _closed_without_end(trace: Trace, now: float) -> None:
    if not trace.finished:
        trace.fail("the stream closed without the end message")
        trace.on_end("closed", trace.next_offset, now)


def _is_true(value: bytes | None) -> bool:
    return value is not None and value.lower() == b"true"


async def follow_long_poll(endpoint: Endpoint, trace: Trace, options: FollowOptions) -> None:
    """Long-poll the stream from its beginning to ``Stream-Closed``."""
    poller = Poller(endpoint, trace)
    offset, cursor = STREAM_START, None
    try:
        while True:
            response = await poller.fetch(read_target(trace.job.id, offset, cursor, "long-poll"))
            now, fields = response.complete_time, response.fields
            if response.status not in (200, 204):
                trace.fail(f"long poll answered {response.status}: {bytes(response.body)[:200]!r}")
                return
            next_offset = fields.get(b"stream-next-offset")
            if not next_offset:
                trace.fail(f"long poll answered {response.status} without Stream-Next-Offset")
                return
            if response.status == 200:
                on_messages(trace, bytes(response.body), now)
            offset = next_offset.decode()
            echoed = fields.get(b"stream-cursor")
            cursor = echoed.decode() if echoed is not None else cursor
            if _is_true(fields.get(b"stream-closed")):
                _closed_without_end(trace, now)
                return
    finally:
        poller.close()


class _ControlledSseReader(SseReader):
    """Durable Streams events: ``data`` messages to the trace, ``control`` to the position."""

    def __init__(self, trace: Trace, ended: asyncio.Future[None]) -> None:
        super().__init__()
        self.trace = trace
        self.ended = ended
        self.offset = STREAM_START
        self.cursor: str | None = None

    def start_at(self, offset: str, cursor: str | None) -> None:
        """A new connection: events follow from ``offset`` (a half-read event is dropped)."""
        self.reset()
        self.offset, self.cursor = offset, cursor

    def on_event(self, event: str, data: list[bytes], now: float) -> None:
        if self.ended.done():
            return
        try:
            if event == "data":
                on_messages(self.trace, b"\n".join(data), now)
            elif event == "control":
                control = json.loads(b"\n".join(data))
                self.offset = str(control["streamNextOffset"])
                cursor = control.get("streamCursor")
                self.cursor = str(cursor) if cursor is not None else self.cursor
                if control.get("streamClosed") is True:
                    _closed_without_end(self.trace, now)
                    self.ended.set_result(None)
            elif data:
                self.trace.fail(f"unexpected SSE event {event!r}")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            # Raised here, it would fail the connection's data_received: stop the follower.
            self.trace.fail(f"bad SSE {event!r} event ({type(e).__name__}: {e})")
            self.ended.set_result(None)


async def follow_sse(endpoint: Endpoint, trace: Trace, options: FollowOptions) -> None:
    """Read the stream as SSE from its beginning to the control event with ``streamClosed``."""
    ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    reader = _ControlledSseReader(trace, ended)
    try:
        for _ in range(1 + SSE_RECONNECTS):
            if await _sse_connection(endpoint, trace, reader, ended):
                return
        trace.fail(f"SSE closed {1 + SSE_RECONNECTS} times before the stream's end")
    finally:
        if not ended.done():
            ended.cancel()


async def _sse_connection(
    endpoint: Endpoint, trace: Trace, reader: _ControlledSseReader, ended: asyncio.Future[None]
) -> bool:
    """One SSE response from the reader's position; True once the stream ended (or failed)."""
    started = time.time()
    conn = await HttpConnection.open(endpoint)
    reader.start_at(reader.offset, reader.cursor)
    try:
        response = conn.request(
            "GET",
            read_target(trace.job.id, reader.offset, reader.cursor, "sse"),
            headers={"Accept": "text/event-stream", "Cache-Control": "no-cache"},
            on_body=reader.feed,
        )
        trace.requests += 1
        status = await response.headers
        trace.mark_connected(started, conn.recv_time)
        if status != 200:
            trace.fail(f"SSE answered {status}")
            return True
        await asyncio.wait([ended, response.done], return_when=asyncio.FIRST_COMPLETED)
        if not ended.done():
            return False  # closed before the end: open again where the last control left off
        # Let the stream's last chunk arrive, so its bytes count.
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(asyncio.shield(response.done), 1.0)
        return True
    finally:
        conn.close()
        trace.bytes_in += conn.bytes_in
        trace.bytes_out += conn.bytes_out


FOLLOWERS: dict[str, Follow] = {
    "long_poll": follow_long_poll,
    "sse": follow_sse,
}


# -- the producer and a run ------------------------------------------------------------


def token_message(offset: int, token: str, sent: float) -> bytes:
    """The body that appends token ``offset`` (the shape of reviewstream's token message)."""
    return json.dumps({"offset": offset, "tokens": [token], "ts": [sent]}).encode()


def end_message(next_offset: int) -> bytes:
    """The body that ends the job, appended together with the stream's closure."""
    return json.dumps({"end": {"status": "done", "next_offset": next_offset}}).encode()


async def produce(
    endpoint: Endpoint,
    path: str,
    tokens: list[str],
    *,
    start_at: float,
    rate: float,
    append_ms: list[float],
    errors: list[str],
) -> int:
    """Append ``tokens`` to the stream at ``path``, token ``i`` due at ``start_at + i / rate``
    (event-loop time), then the end with ``Stream-Closed: true``. Returns the tokens appended.

    A request is never sent twice: an append is not idempotent without the protocol's producer
    headers, and a repeated token would show up as a duplicate at every follower.
    """
    loop = asyncio.get_running_loop()
    conn: HttpConnection | None = None
    appended = 0
    try:
        for i, token in enumerate([*tokens, None]):
            await asyncio.sleep(max(0.0, start_at + i / rate - loop.time()))
            if conn is None or not conn.is_open:  # the server may close an idle keep-alive
                if conn is not None:
                    conn.close()
                conn = await HttpConnection.open(endpoint)
            headers = {"Content-Type": CONTENT_TYPE}
            sent = time.time()
            if token is None:
                body = end_message(appended)
                headers["Stream-Closed"] = "true"
            else:
                body = token_message(i, token, sent)
            response = conn.request("POST", path, headers=headers, body=body)
            await response.done
            if response.status != 204:
                answer = bytes(response.body[:200])
                errors.append(f"append to {path} answered {response.status}: {answer!r}")
                return appended
            append_ms.append((response.complete_time - sent) * 1000)
            appended += token is not None
    except OSError as e:
        errors.append(f"appending to {path} failed: {e}")
    finally:
        if conn is not None:
            conn.close()
    return appended


async def _stored(client: httpx.AsyncClient, path: str) -> tuple[list[str], bool]:
    """The stream's tokens as stored, and whether it holds the end and is closed."""
    response = await client.get(path, params={"offset": STREAM_START})
    response.raise_for_status()
    trace = Trace("read-back", JobHandle(path, 0.0))
    for message in response.json():
        on_message(trace, message, 0.0)
    closed = response.headers.get("stream-closed", "").lower() == "true"
    tokens = [t for t in trace.tokens if t is not None]
    return tokens, closed and trace.finished and trace.error_count == 0


async def run_load(
    scenario: Scenario,
    system: System,
    tokens: list[str],
    *,
    tag: str,
    seed: int = 0,
    progress: Progress | None = None,
) -> PeerRun:
    """Run ``scenario``'s load once on the server at ``system``; ``tokens`` are each job's."""
    endpoint = Endpoint.from_url(system.base_url)
    loop = asyncio.get_running_loop()
    traces: list[Trace] = []
    tasks: list[asyncio.Task[None]] = []
    producers: list[asyncio.Task[int]] = []
    errors: list[str] = []
    append_ms: list[float] = []
    deadline = deadline_seconds(scenario)
    first_token = scenario.server.first_token_ms / 1000
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    jobs: list[JobHandle] = []
    async with (
        httpx.AsyncClient(base_url=system.base_url, limits=limits, timeout=30) as client,
        contextlib.AsyncExitStack() as stack,
    ):
        semaphore = asyncio.Semaphore(16)

        async def start(index: int) -> None:
            path = f"/bench/{tag}-{index}"
            try:
                async with semaphore:
                    posted_at, due = time.time(), loop.time() + first_token
                    response = await client.put(path, headers={"Content-Type": CONTENT_TYPE})
                if response.status_code != 201:
                    raise RuntimeError(f"PUT {path} answered {response.status_code}")
            except (httpx.HTTPError, RuntimeError) as e:
                errors.append(f"creating a stream failed: {e}")
                return
            job = JobHandle(path, posted_at)
            jobs.append(job)
            for mode in scenario.modes:
                for k in range(scenario.per_job):
                    trace = Trace(mode, job)
                    traces.append(trace)
                    options = FollowOptions(seed=seed * 1_000_003 + index * 101 + k)
                    tasks.append(
                        asyncio.create_task(follow(mode, endpoint, trace, options, FOLLOWERS))
                    )
            producer = produce(
                endpoint, path, tokens, start_at=due, rate=scenario.server.rate,
                append_ms=append_ms, errors=errors,
            )  # fmt: skip
            producers.append(asyncio.create_task(producer))

        stack.enter_context(collector_paused())
        before = await sample(system)
        started = time.monotonic()
        try:
            await asyncio.gather(*(start(i) for i in range(scenario.jobs)))
            await wait_followers(tasks, traces, deadline, started, progress)
            left = started + deadline - time.monotonic()
            if producers and left > 0:
                await asyncio.wait(producers, timeout=left)
            after = await sample(system)
            duration = time.monotonic() - started
        finally:
            for task in [*tasks, *producers]:
                task.cancel()
            results = await asyncio.gather(*tasks, *producers, return_exceptions=True)
        appended = sum(r for r in results[len(tasks) :] if isinstance(r, int))
        by_job: dict[str, list[Trace]] = {}
        for trace in traces:
            by_job.setdefault(trace.job.id, []).append(trace)
        for job in jobs:
            try:
                stored, ended = await _stored(client, job.id)
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
                errors.append(f"reading stream {job.id} back failed: {e}")
                for trace in by_job.get(job.id, []):
                    trace.fail("its stream could not be read back")
                continue
            if stored != tokens or not ended:
                errors.append(f"stream {job.id} did not store the job's tokens and its end")
            for trace in by_job.get(job.id, []):
                trace.verify(stored)
    return PeerRun(scenario, traces, duration, appended, before, after, errors, append_ms)
