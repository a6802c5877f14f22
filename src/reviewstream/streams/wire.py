"""Every byte a Durable Streams reader gets: bodies, SSE events, ETags, cursors, headers.

Chunks are stored as strings (the Redis clients decode replies): a job's tokens are its text,
an outside stream's chunks hold one latin-1 code point per byte, so its bytes come back exactly
(``Shape.encoding`` says which). A JSON-mode stream stores one message per chunk and is read as
one JSON array.

SSE follows DESIGN "Text is exact": each payload line is a ``data:`` line, and a line that
begins with a space is written ``data:  word``, because a standard parser drops one space after
the colon; other lines are written ``data:line`` as the protocol's reference does. Streams that
are neither ``text/*`` nor JSON are sent base64 (``stream-sse-data-encoding: base64``).
"""

from __future__ import annotations

import base64
import codecs
import json
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import offsets

NEXT_OFFSET = "Stream-Next-Offset"
UP_TO_DATE = "Stream-Up-To-Date"
CLOSED = "Stream-Closed"
CURSOR = "Stream-Cursor"
TTL = "Stream-TTL"
EXPIRES_AT = "Stream-Expires-At"
SSE_ENCODING = "stream-sse-data-encoding"
# Extensions: how a job's stream ended (done, failed, cancelled) and why, on the closing answer.
JOB_STATUS = "Stream-Job-Status"
JOB_ERROR = "Stream-Job-Error"
# A job's attempt on its reads: each attempt is its producer's epoch (a continued attempt
# appends after the stored text, as a producer's new epoch does).
PRODUCER_EPOCH = "Producer-Epoch"

# Every answer of this dialect carries them (PROTOCOL 12.7).
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "cross-origin",
}
REQUEST_HEADERS = (
    "Authorization",
    "Content-Type",
    "If-None-Match",
    "Last-Event-ID",
    "Stream-Seq",
    "Stream-TTL",
    "Stream-Expires-At",
    "Stream-Closed",
    "Producer-Id",
    "Producer-Epoch",
    "Producer-Seq",
    "Stream-Forked-From",
    "Stream-Fork-Offset",
    "Stream-Fork-Sub-Offset",
)
RESPONSE_HEADERS = (
    NEXT_OFFSET,
    CURSOR,
    UP_TO_DATE,
    CLOSED,
    TTL,
    EXPIRES_AT,
    JOB_STATUS,
    JOB_ERROR,
    "Producer-Epoch",
    "Producer-Seq",
    "Producer-Expected-Seq",
    "Producer-Received-Seq",
    "ETag",
    "Content-Type",
    "Location",
    "Retry-After",
    SSE_ENCODING,
)
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS")

CURSOR_EPOCH = 1728432000  # 2024-10-09T00:00:00Z, the protocol's default
CURSOR_INTERVAL = 20  # seconds


@dataclass(frozen=True, slots=True)
class Shape:
    """How a stream's chunks become bytes: its content type, and the codec of its chunks."""

    content_type: str
    encoding: str = "utf-8"  # a job's tokens are text; "latin-1": one code point per byte

    @property
    def json(self) -> bool:
        return media_type(self.content_type) == "application/json"

    @property
    def text(self) -> bool:
        """SSE carries it as text (else base64)."""
        media = media_type(self.content_type)
        return media.startswith("text/") or media == "application/json"


JOB_SHAPE = Shape("text/plain; charset=utf-8")


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def body(shape: Shape, chunks: Sequence[str]) -> bytes:
    """A catch-up or long-poll body: the chunks' bytes, or a JSON stream's messages as an array."""
    if shape.json:
        return b"[" + ",".join(chunks).encode(shape.encoding) + b"]"
    return "".join(chunks).encode(shape.encoding)


class SseText:
    """A stream's chunks as SSE payloads, for one connection: a UTF-8 character split across
    two batches of a byte stream is held until its end arrives."""

    __slots__ = ("_decoder", "shape")

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def payload(self, chunks: Sequence[str]) -> str:
        shape = self.shape
        if not shape.text:
            return base64.b64encode("".join(chunks).encode(shape.encoding)).decode("ascii")
        if shape.json:
            return "[" + self._text(",".join(chunks)) + "]"
        return self._text("".join(chunks))

    def _text(self, joined: str) -> str:
        if self.shape.encoding == "utf-8":
            return joined
        return self._decoder.decode(joined.encode(self.shape.encoding))


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def data_event(payload: str) -> bytes:
    """``event: data`` with the payload's lines, each one exactly as stored (module docstring)."""
    lines = [
        ("data: " if line.startswith(" ") else "data:") + line
        for line in _LINE_BREAK.split(payload)
    ]
    return ("event: data\n" + "\n".join(lines) + "\n\n").encode()


def control_event(fields: dict[str, Any], offset: int) -> bytes:
    """``event: control`` (camelCase fields, JSON), with ``id:`` = the offset to resume from,
    so an EventSource reconnects with it as ``Last-Event-ID``."""
    data = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    return f"event: control\ndata:{data}\nid:{offsets.encode(offset)}\n\n".encode()


def control(
    next_offset: int,
    *,
    cursor: str | None,
    up_to_date: bool,
    closed: bool,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A control event's fields: no cursor once closed (no reconnect follows)."""
    fields: dict[str, Any] = {"streamNextOffset": offsets.encode(next_offset)}
    if closed:
        fields["streamClosed"] = True
        fields["upToDate"] = True
    else:
        if cursor is not None:
            fields["streamCursor"] = cursor
        if up_to_date:
            fields["upToDate"] = True
    if extra:
        fields.update(extra)
    return fields


def etag(stream_id: str, start: int, end: int, closed: bool) -> str:
    """``"{stream}:{start}:{end}"``, with ``:c`` once the read reached a closed stream's end."""
    return f'"{stream_id}:{offsets.encode(start)}:{offsets.encode(end)}{":c" if closed else ""}"'


def cursor(client_cursor: str | None, now: float | None = None) -> str:
    """The interval number since the protocol's epoch; past a client's cursor when it is not
    behind, by a random jump, so cursors never repeat into a cached answer (PROTOCOL 10.1)."""
    interval = int(((time.time() if now is None else now) - CURSOR_EPOCH) // CURSOR_INTERVAL)
    if client_cursor is None or not client_cursor.isascii() or not client_cursor.isdigit():
        return str(interval)
    theirs = int(client_cursor[:18])
    if theirs < interval:
        return str(interval)
    return str(theirs + max(1, random.randint(1, 3600) // CURSOR_INTERVAL))
