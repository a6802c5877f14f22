"""One follower per delivery mode, each recording what it sees into a ``Trace``.

Every follower starts at offset 0 right after its job was created and reads to the job's end.
The trace keeps the tokens by offset (so lost, duplicated and wrong tokens show up against the
job's stored text afterwards), the delivery latency of each token (arrival ``time.time()`` minus
the server's append time ``ts``, both on this machine's clock), the time to the first token and
to the end from the job's ``POST``, and the requests and bytes the follower needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from .conn import Endpoint, HttpConnection, Response, WebSocketConnection

LONG_POLL_HOLD_SECONDS = 20


@dataclass(frozen=True, slots=True)
class JobHandle:
    """A job the benchmark created, and when it sent the ``POST``."""

    id: str
    posted_at: float


@dataclass(eq=False)
class Trace:
    """What one follower saw of one job."""

    mode: str
    job: JobHandle
    tokens: list[str | None] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)
    connect_ms: float | None = None
    connected_at: float | None = None
    first_token_at: float | None = None
    end_at: float | None = None
    end_status: str | None = None
    end_next_offset: int | None = None
    end_error: str | None = None
    lost: int = 0
    duplicated: int = 0
    mismatched: int = 0
    missing_ts: int = 0
    requests: int = 0
    messages: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def next_offset(self) -> int:
        return len(self.tokens)

    @property
    def finished(self) -> bool:
        return self.end_at is not None

    def on_tokens(self, offset: int, tokens: list[str], ts: list[float], now: float) -> None:
        """Record a batch that starts at ``offset``; anything already held is a duplicate."""
        self.messages += 1
        if not tokens:
            return
        have = len(self.tokens)
        if offset > have:
            self.lost += offset - have
            self.tokens.extend([None] * (offset - have))
            have = offset
        skip = have - offset
        if skip > 0:
            self.duplicated += min(skip, len(tokens))
        new = tokens[skip:]
        if not new:
            return
        if self.first_token_at is None:
            self.first_token_at = now
        self.tokens.extend(new)
        stamps = ts[skip:] if len(ts) == len(tokens) else []
        if len(stamps) != len(new):
            self.missing_ts += len(new)
            return
        self.latencies_ms.extend((now - t) * 1000.0 for t in stamps)
        self.stamps.extend(stamps)

    def mark_connected(self, started: float, now: float) -> None:
        """The follower is in place: the stream is open, or (polls) the first request is on its
        way. Tokens appended from ``now`` on are live; earlier ones arrive as history, whose
        latency includes the wait to connect."""
        if self.connected_at is None:
            self.connected_at = now
            self.connect_ms = (now - started) * 1000

    def live_latencies_ms(self) -> list[float]:
        """Latencies of the tokens appended after this follower was connected."""
        since = self.connected_at if self.connected_at is not None else float("inf")
        return [lat for lat, ts in zip(self.latencies_ms, self.stamps, strict=True) if ts >= since]

    def on_end(self, status: str, next_offset: int, now: float, error: str | None = None) -> None:
        """Record the job's end as announced to this follower."""
        if self.end_at is not None:
            self.errors.append("end delivered twice")
            return
        self.end_at = now
        self.end_status = status
        self.end_next_offset = next_offset
        self.end_error = error

    def fail(self, message: str) -> None:
        """Record a failure (each one counts as an error)."""
        self.errors.append(message)

    def verify(self, reference: list[str]) -> None:
        """Compare what arrived with the job's stored tokens."""
        if not self.finished:
            self.fail("did not see the end of the job")
        elif self.end_status != "done":
            self.fail(f"job ended {self.end_status}: {self.end_error}")
        elif self.end_next_offset != len(reference):
            self.fail(f"end said {self.end_next_offset} tokens, the job has {len(reference)}")
        if len(self.tokens) < len(reference) and self.finished:
            self.lost += len(reference) - len(self.tokens)
        if len(self.tokens) > len(reference):
            self.fail(f"{len(self.tokens) - len(reference)} tokens past the job's end")
        self.mismatched = sum(
            1
            for got, want in zip(self.tokens, reference, strict=False)
            if got is not None and got != want
        )

    @property
    def error_count(self) -> int:
        """Everything that must be zero: failures plus lost, duplicated and wrong tokens."""
        return len(self.errors) + self.lost + self.duplicated + self.mismatched


@dataclass(frozen=True, slots=True)
class FollowOptions:
    """How a follower behaves: its short-poll interval, long-poll hold, and random seed."""

    poll_interval: float = 1.0
    long_poll_hold: float = LONG_POLL_HOLD_SECONDS
    seed: int = 0


Follow = Callable[[Endpoint, Trace, FollowOptions], Awaitable[None]]


class Poller:
    """Sequential GETs over one keep-alive connection, reconnecting when the server closed it
    while idle (uvicorn closes idle keep-alive connections after a few seconds)."""

    def __init__(self, endpoint: Endpoint, trace: Trace) -> None:
        self.endpoint = endpoint
        self.trace = trace
        self._conn: HttpConnection | None = None
        self._closed: list[HttpConnection] = []

    async def fetch(self, target: str) -> Response:
        """``GET target``: the whole response, its header fields included."""
        for attempt in (1, 2):
            if self._conn is None or not self._conn.is_open:
                self._retire()
                started = time.time()
                self._conn = await HttpConnection.open(self.endpoint)
                self.trace.mark_connected(started, time.time())
            try:
                response = self._conn.request("GET", target)
                self.trace.requests += 1
                await response.done
            except ConnectionError:
                if attempt == 2 or self._conn.bytes_in:
                    raise
                continue  # closed while idle, before answering: reconnect once
            return response
        raise AssertionError("unreachable")

    def _retire(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._closed.append(self._conn)
            self._conn = None

    def close(self) -> None:
        self._retire()
        for conn in self._closed:
            self.trace.bytes_in += conn.bytes_in
            self.trace.bytes_out += conn.bytes_out
        self._closed.clear()


def _on_page(trace: Trace, kind: str, response: Response) -> bool:
    """One poll's answer; True once there is no more to ask (the end, or a refusal)."""
    if response.status != 200:
        trace.fail(f"{kind} answered {response.status}")
        return True
    page, now = json.loads(bytes(response.body)), response.complete_time
    trace.on_tokens(page["offset"], page["tokens"], page.get("ts") or [], now)
    if page["next_offset"] != trace.next_offset:
        trace.fail(f"next_offset {page['next_offset']} != {trace.next_offset}")
    if page["done"]:
        trace.on_end(page["status"], page["next_offset"], now, page.get("error"))
        return True
    return False


async def follow_short_poll(endpoint: Endpoint, trace: Trace, options: FollowOptions) -> None:
    """Poll ``GET /jobs/{id}?offset=N`` every ``poll_interval`` seconds (random phase)."""
    poller = Poller(endpoint, trace)
    loop = asyncio.get_running_loop()
    interval = options.poll_interval
    rng = random.Random(options.seed)
    next_at = loop.time() + rng.uniform(0, interval)
    try:
        while True:
            target = f"/jobs/{trace.job.id}?offset={trace.next_offset}"
            if _on_page(trace, "short poll", await poller.fetch(target)):
                return
            now_mono = loop.time()
            while next_at <= now_mono:  # a slow answer skips the ticks it missed
                next_at += interval
            await asyncio.sleep(next_at - now_mono)
    finally:
        poller.close()


async def follow_long_poll(endpoint: Endpoint, trace: Trace, options: FollowOptions) -> None:
    """Ask ``GET /jobs/{id}/long-poll?offset=N`` again as soon as each answer arrives."""
    poller = Poller(endpoint, trace)
    hold = options.long_poll_hold
    try:
        while True:
            target = f"/jobs/{trace.job.id}/long-poll?offset={trace.next_offset}&timeout={hold:g}"
            if _on_page(trace, "long poll", await poller.fetch(target)):
                return
    finally:
        poller.close()


class SseReader:
    """Splits a streamed body into SSE events; a subclass says what each event means.

    Every follower that reads SSE (reviewstream's, and the peers' in ``benchmarks/``) parses
    with this, so a comparison between them measures the servers, not two parsers.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def reset(self) -> None:
        """A new response: drop what is left of an event the last one cut short."""
        self._buffer = b""

    def feed(self, data: bytes, now: float) -> None:
        buffer = self._buffer + data
        while True:
            cut, sep = buffer.find(b"\r\n\r\n"), 4
            lf = buffer.find(b"\n\n")
            if lf >= 0 and (cut < 0 or lf < cut):
                cut, sep = lf, 2
            if cut < 0:
                break
            self._block(buffer[:cut], now)
            buffer = buffer[cut + sep :]
        self._buffer = buffer

    def _block(self, block: bytes, now: float) -> None:
        event, data = "message", []
        for raw in block.split(b"\n"):
            line = raw.rstrip(b"\r")
            if not line or line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if name == b"event":
                event = value.decode()
            elif name == b"data":
                data.append(value)
        self.on_event(event, data, now)

    def on_event(self, event: str, data: list[bytes], now: float) -> None:
        """One complete event: its name and its ``data`` lines (without the field name)."""
        raise NotImplementedError


class _SseReader(SseReader):
    """reviewstream's events: ``token`` and ``end`` go to the trace."""

    def __init__(self, trace: Trace, ended: asyncio.Future[None]) -> None:
        super().__init__()
        self.trace = trace
        self.ended = ended

    def on_event(self, event: str, data: list[bytes], now: float) -> None:
        if event == "token":
            message = json.loads(b"\n".join(data))
            self.trace.on_tokens(message["offset"], message["tokens"], message["ts"], now)
        elif event == "end":
            message = json.loads(b"\n".join(data))
            self.trace.on_end(message["status"], message["next_offset"], now, message.get("error"))
            if not self.ended.done():
                self.ended.set_result(None)
        elif event == "error":
            self.trace.fail(f"SSE error event: {b''.join(data)[:200]!r}")
        elif data:
            self.trace.fail(f"unexpected SSE event {event!r}")


async def follow_sse(endpoint: Endpoint, trace: Trace, options: FollowOptions) -> None:
    """Read ``GET /jobs/{id}/events`` until its ``end`` event."""
    started = time.time()
    conn = await HttpConnection.open(endpoint)
    ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    reader = _SseReader(trace, ended)
    try:
        response = conn.request(
            "GET",
            f"/jobs/{trace.job.id}/events?offset=0",
            headers={"Accept": "text/event-stream", "Cache-Control": "no-cache"},
            on_body=reader.feed,
        )
        trace.requests += 1
        status = await response.headers
        trace.mark_connected(started, conn.recv_time)
        if status != 200:
            trace.fail(f"SSE answered {status}")
            return
        finished, _ = await asyncio.wait(
            [ended, response.done], return_when=asyncio.FIRST_COMPLETED
        )
        if ended not in finished:
            trace.fail("SSE stream closed before the end event")
        else:
            # Let the stream's last chunk arrive, so its bytes count.
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(asyncio.shield(response.done), 1.0)
    finally:
        hang_up(conn, trace, ended)


def hang_up(
    conn: HttpConnection | WebSocketConnection, trace: Trace, ended: asyncio.Future[None]
) -> None:
    """Close a streaming follower's connection and count its bytes."""
    conn.close()
    trace.bytes_in += conn.bytes_in
    trace.bytes_out += conn.bytes_out
    if not ended.done():
        ended.cancel()


async def follow_websocket(endpoint: Endpoint, trace: Trace, options: FollowOptions) -> None:
    """Read ``WS /jobs/{id}/ws`` until its ``end`` message."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def on_message(payload: bytes, now: float) -> None:
        message = json.loads(payload)
        kind = message.get("type")
        if kind == "tokens":
            trace.on_tokens(message["offset"], message["tokens"], message["ts"], now)
        elif kind == "end":
            trace.on_end(message["status"], message["next_offset"], now, message.get("error"))
            if not ended.done():
                ended.set_result(None)
        else:
            trace.fail(f"unexpected WebSocket message {payload[:200]!r}")

    started = time.time()
    conn = WebSocketConnection(endpoint, f"/jobs/{trace.job.id}/ws?offset=0", on_message)
    try:
        await loop.create_connection(lambda: conn, endpoint.host, endpoint.port)
        trace.requests += 1
        await conn.handshake
        trace.mark_connected(started, conn.handshake_time)
        finished, _ = await asyncio.wait([ended, conn.closed], return_when=asyncio.FIRST_COMPLETED)
        if ended not in finished:
            trace.fail(f"WebSocket closed ({conn.close_code}) before the end message")
        else:
            # Let the server's close frame arrive, so its bytes count like SSE's last chunk.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(conn.closed), 1.0)
    finally:
        hang_up(conn, trace, ended)


FOLLOWERS: dict[str, Follow] = {
    "short_poll": follow_short_poll,
    "long_poll": follow_long_poll,
    "sse": follow_sse,
    "websocket": follow_websocket,
}


async def follow(
    mode: str,
    endpoint: Endpoint,
    trace: Trace,
    options: FollowOptions,
    followers: Mapping[str, Follow] = FOLLOWERS,
) -> None:
    """Run the ``mode`` follower of ``followers`` (reviewstream's by default); any failure is
    recorded in the trace, not raised."""
    try:
        await followers[mode](endpoint, trace, options)
    except asyncio.CancelledError:
        trace.fail("cancelled at the run's deadline")
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        trace.fail(f"{type(e).__name__}: {e}")
