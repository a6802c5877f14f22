"""Lean client connections for the benchmark: HTTP/1.1 (keep-alive, streamed bodies) and
WebSocket.

Why not httpx, httpx-sse and websockets: at the largest fan-out the client receives a message per
token per follower on the same cores as the server, and a general-purpose client spends more
CPU per message than the server does, so the benchmark would measure itself. These are
``asyncio.Protocol``s that parse in ``data_received`` (httptools, a C parser, for HTTP; a few
lines for WebSocket frames, which servers send unmasked), stamp every read with ``time.time()``
as it arrives, and count the bytes on the wire both ways (HTTP layer and up: request and response
heads, chunk framing and WebSocket frame headers included; TCP/IP headers not).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

BodyCallback = Callable[[bytes, float], None]
MessageCallback = Callable[[bytes, float], None]

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the server listens."""

    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        """The endpoint of an ``http://host:port`` base URL."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected an http://host:port URL, got {url!r}")
        return cls(parts.hostname, parts.port or 80)

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"


def _consume(future: asyncio.Future[Any]) -> None:
    # A future failed by a lost connection may never be awaited (the follower already left):
    # retrieve its exception so asyncio does not log it as never retrieved.
    if not future.cancelled():
        future.exception()


@dataclass(eq=False)
class Response:
    """One HTTP response as it arrives; ``on_body`` (when set) receives the body in pieces.

    ``headers`` resolves to the status once the head is in; ``fields`` then holds the header
    fields by lower-case name (a repeated field keeps its last value).
    """

    on_body: BodyCallback | None
    headers: asyncio.Future[int]
    done: asyncio.Future[None]
    status: int = 0
    fields: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    complete_time: float = 0.0


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.bytes_in = 0
        self.bytes_out = 0
        self.recv_time = 0.0
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._response: Response | None = None
        self._keep_alive = True

    @classmethod
    async def open(cls, endpoint: Endpoint) -> HttpConnection:
        """Connect to ``endpoint``."""
        conn = cls(endpoint)
        await asyncio.get_running_loop().create_connection(
            lambda: conn, endpoint.host, endpoint.port
        )
        return conn

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def request(
        self,
        method: str,
        target: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        on_body: BodyCallback | None = None,
    ) -> Response:
        """Send a request; await ``.headers`` (the status) and ``.done`` on the answer."""
        if self._transport is None or self._transport.is_closing() or not self._keep_alive:
            raise ConnectionError("connection closed")
        if self._response is not None:
            raise RuntimeError("one request at a time on a connection")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.endpoint.authority}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
        response = Response(on_body, self._loop.create_future(), self._loop.create_future())
        response.headers.add_done_callback(_consume)
        response.done.add_done_callback(_consume)
        self._response = response
        self._transport.write(data)
        self.bytes_out += len(data)
        return response

    def close(self) -> None:
        """Close the connection (an open response fails with ``ConnectionError``)."""
        if self._transport is not None:
            self._transport.close()

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.recv_time = time.time()
        self.bytes_in += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(ConnectionError(f"bad HTTP response: {e}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"connection closed: {exc}" if exc else "connection closed"))
        self._transport = None

    def _fail(self, error: Exception) -> None:
        response, self._response = self._response, None
        if response is None:
            return
        for future in (response.headers, response.done):
            if not future.done():
                future.set_exception(error)

    # -- httptools callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self._response
        if response is not None:
            response.fields[name.lower()] = value

    def on_headers_complete(self) -> None:
        response = self._response
        if response is not None:
            response.status = self._parser.get_status_code()
            self._keep_alive = self._parser.should_keep_alive()
            if not response.headers.done():
                response.headers.set_result(response.status)

    def on_body(self, body: bytes) -> None:
        response = self._response
        if response is None:
            return
        if response.on_body is not None:
            response.on_body(body, self.recv_time)
        else:
            response.body += body

    def on_message_complete(self) -> None:
        response, self._response = self._response, None
        if response is None:
            return
        response.complete_time = self.recv_time
        if not response.done.done():
            response.done.set_result(None)
        if not self._keep_alive:
            self.close()


class WebSocketConnection(asyncio.Protocol):
    """A WebSocket client: text messages go to ``on_message`` with their arrival time.

    Answers pings, echoes the server's close and then closes; sends nothing else. ``status`` is
    the handshake's answer (101 once open), 0 until it arrives.
    """

    def __init__(self, endpoint: Endpoint, target: str, on_message: MessageCallback) -> None:
        self.endpoint = endpoint
        self.target = target
        self.on_message = on_message
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.messages = 0
        self.close_code: int | None = None
        self.handshake_time = 0.0
        self._loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[None] = self._loop.create_future()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.handshake.add_done_callback(_consume)
        self.closed.add_done_callback(_consume)
        self._transport: asyncio.Transport | None = None
        self._key = base64.b64encode(os.urandom(16))
        self._buffer = bytearray()
        self._open = False
        self._fragments = bytearray()
        self._close_sent = False

    @classmethod
    async def open(
        cls, endpoint: Endpoint, target: str, on_message: MessageCallback
    ) -> WebSocketConnection:
        """Connect and complete the opening handshake."""
        conn = cls(endpoint, target, on_message)
        await asyncio.get_running_loop().create_connection(
            lambda: conn, endpoint.host, endpoint.port
        )
        await conn.handshake
        return conn

    def close(self, code: int = 1000) -> None:
        """Send a close frame (once) and close the connection."""
        if self._transport is None or self._transport.is_closing():
            return
        if self._open and not self._close_sent:
            self._send(0x8, code.to_bytes(2, "big"))
            self._close_sent = True
        self._transport.close()

    def _send(self, opcode: int, payload: bytes) -> None:
        assert self._transport is not None
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
        else:
            head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        frame = head + mask + masked
        self._transport.write(frame)
        self.bytes_out += len(frame)

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        self._transport = cast(asyncio.Transport, transport)
        request = (
            f"GET {self.target} HTTP/1.1\r\n"
            f"Host: {self.endpoint.authority}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self._key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self._transport.write(request)
        self.bytes_out += len(request)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        error = ConnectionError(f"connection closed: {exc}" if exc else "connection closed")
        if not self.handshake.done():
            self.handshake.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.bytes_in += len(data)
        self._buffer += data
        if not self._open and not self._read_handshake(now):
            return
        self._read_frames(now)

    def _read_handshake(self, now: float) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self._buffer[:end]).decode("latin-1")
        del self._buffer[: end + 4]
        status_line, *header_lines = head.split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines)
        }
        accept = base64.b64encode(hashlib.sha1(self._key + _WS_GUID).digest()).decode()
        code = status_line.split(" ")[1:2]
        self.status = int(code[0]) if code and code[0].isdigit() else -1
        if self.status != 101:
            self._refuse(f"handshake answered {status_line!r}")
            return False
        if headers.get("sec-websocket-accept") != accept:
            self._refuse("handshake: wrong Sec-WebSocket-Accept")
            return False
        self._open = True
        self.handshake_time = now
        self.handshake.set_result(None)
        return True

    def _refuse(self, reason: str) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError(reason))
        if self._transport is not None:
            self._transport.close()

    def _read_frames(self, now: float) -> None:
        buf = self._buffer
        pos = 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if len(buf) - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if len(buf) - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            mask = b""
            if b1 & 0x80:  # servers do not mask, but be liberal in what we accept
                if len(buf) - pos < head + 4:
                    break
                mask = bytes(buf[pos + head : pos + head + 4])
                head += 4
            if len(buf) - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            pos += head + length
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            self._frame(b0 & 0x80 != 0, b0 & 0x0F, payload, now)
        del buf[:pos]

    def _frame(self, fin: bool, opcode: int, payload: bytes, now: float) -> None:
        if opcode in (0x0, 0x1, 0x2):  # continuation, text, binary
            if not fin:
                self._fragments += payload
                return
            if self._fragments:
                payload = bytes(self._fragments + payload)
                self._fragments.clear()
            self.messages += 1
            self.on_message(payload, now)
        elif opcode == 0x9:  # ping
            if self._transport is not None and not self._transport.is_closing():
                self._send(0xA, payload)
        elif opcode == 0x8:  # close
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not self._close_sent and self._transport is not None:
                self._send(0x8, payload[:2])
                self._close_sent = True
            if not self.closed.done():
                self.closed.set_result(None)
            if self._transport is not None:
                self._transport.close()
