"""Every byte the live modes send a client, and the names clients depend on.

Tokens: ``{"offset": N, "tokens": [...], "next_offset": M, "ts": [...]}`` (WebSocket adds
``"type": "tokens"``; SSE carries M as the event id). End: ``{"status", "next_offset", "error",
"usage", "sha256"}`` (WebSocket adds ``"type": "end"``). Status: ``{"status", "attempt", "offset",
"reason", "reset"}`` when a job's producer changed (SSE ``event: status``, WebSocket ``"type":
"status"``); clients that ignore unknown events keep working. ``ts`` is each token's server
append time. A batch's encodings are cached on it (``Batch.encoded``), so a process encodes each
notification once per dialect however many followers it has. The short and long poll answer with
``models.JobPage`` as JSON (``page_json``, the bytes FastAPI's JSON answer would send); a long
poll's answer with a batch is cached on the batch too, so the caught-up pollers one notification
wakes at the same offset share one encoding (``long_poll_body``).

The AI SDK's UI message stream (``ui_*``): SSE whose every ``data:`` line is one JSON part —
``start`` (``messageId``: the job id), ``text-start``, a ``text-delta`` per batch, then
``text-end`` and ``finish`` (the end record as ``messageMetadata``), or ``message-metadata`` and
``error`` (failed) or ``abort`` (cancelled); last ``data: [DONE]``. A changed producer is a
transient ``data-status`` part (the status notice as its ``data``), never a rewrite.
"""

from __future__ import annotations

import json
from enum import IntEnum
from typing import Any, Literal

from sse_starlette import ServerSentEvent

from .models import Batch, BatchPage, JobEnd, JobNotice, JobPage, JobStatus

UI_STREAM_HEADER = (b"x-vercel-ai-ui-message-stream", b"v1")

Mode = Literal["short_poll", "long_poll", "sse", "websocket"]
MODES: tuple[Mode, ...] = ("short_poll", "long_poll", "sse", "websocket")  # by how they wait


class CloseCode(IntEnum):
    """WebSocket close codes: 4000 + the HTTP status they stand for, and RFC 6455's own."""

    END_OF_JOB = 1000
    UNSUPPORTED_DATA = 1003  # a binary frame: the client sends JSON text only
    MESSAGE_TOO_BIG = 1009  # above REVIEWSTREAM_WS_MAX_MESSAGE_BYTES
    SERVICE_RESTART = 1012  # the server is shutting down: reconnect, resume from the offset
    BAD_REQUEST = 4400
    UNAUTHORIZED = 4401  # where the server cannot answer the handshake with HTTP 401
    FORBIDDEN = 4403
    NOT_FOUND = 4404
    INVALID = 4422
    TOO_MANY = 4429  # a per-key limit (open streams): retry later
    UNAVAILABLE = 4503

    @property
    def final(self) -> bool:
        """Retrying cannot change this answer (the request itself is wrong)."""
        return self in (
            CloseCode.BAD_REQUEST,
            CloseCode.UNAUTHORIZED,
            CloseCode.FORBIDDEN,
            CloseCode.NOT_FOUND,
            CloseCode.INVALID,
        )


def tokens_message(batch: Batch) -> dict[str, Any]:
    return {
        "offset": batch.offset,
        "tokens": batch.tokens,
        "next_offset": batch.next_offset,
        "ts": batch.ts,
    }


def end_message(end: JobEnd) -> dict[str, Any]:
    return end.model_dump(mode="json")


# One encoder for every message: ``json.dumps`` with options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps(message: dict[str, Any]) -> str:
    return _ENCODER.encode(message)


# -- polls ----------------------------------------------------------------------------------


def page_json(page: JobPage) -> bytes:
    """A poll's answer: the bytes FastAPI's ``JSONResponse`` would send for ``page``."""
    content = page.model_dump(mode="json")
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode()


def long_poll_body(answer: JobPage | BatchPage) -> bytes:
    """A long poll's answer. One that brings a batch is encoded once per batch: every caught-up
    poller one notification wakes gets the same batch object, and so the same bytes. The cache
    holds one answer: what else goes into it (attempts, the end) changes at most once per batch.
    """
    if isinstance(answer, JobPage):
        return page_json(answer)
    batch, end = answer.batch, answer.end
    cached: tuple[str, int, JobEnd | None, bytes] | None = batch.encoded.get("long_poll")
    if cached is not None and cached[:3] == (answer.job_id, answer.attempts, end):
        return cached[3]
    page = JobPage(
        id=answer.job_id,
        status=end.status if end is not None else JobStatus.RUNNING,
        offset=batch.offset,
        next_offset=batch.next_offset,
        tokens=batch.tokens,
        ts=batch.ts,
        done=end is not None,
        error=end.error if end is not None else None,
        usage=end.usage if end is not None else None,
        attempts=answer.attempts,
        sha256=end.sha256 if end is not None else None,
    )
    body = page_json(page)
    batch.encoded["long_poll"] = (answer.job_id, answer.attempts, end, body)
    return body


# -- SSE ------------------------------------------------------------------------------------


def sse_preamble(retry_ms: int) -> bytes:
    """The stream's first bytes: a comment, and the reconnect hint EventSource honours."""
    return ServerSentEvent(comment="reviewstream", retry=retry_ms).encode()


def sse_token_event(batch: Batch) -> bytes:
    """The SSE ``token`` event of a batch (id = the offset after it), encoded once per batch."""
    event: bytes | None = batch.encoded.get("sse")
    if event is None:
        data = dumps({"offset": batch.offset, "tokens": batch.tokens, "ts": batch.ts})
        # What ``ServerSentEvent(data, event="token", id=...).encode()`` writes, without its
        # line splitting: JSON escapes every line break, so the data is one line.
        event = b"id: %d\r\nevent: token\r\ndata: %s\r\n\r\n" % (
            batch.next_offset,
            data.encode(),
        )
        batch.encoded["sse"] = event
    return event


def sse_end_event(end: JobEnd) -> bytes:
    return ServerSentEvent(dumps(end_message(end)), event="end").encode()


def sse_status_event(notice: JobNotice) -> bytes:
    return ServerSentEvent(dumps(notice.model_dump(mode="json")), event="status").encode()


def sse_event(item: Batch | JobEnd | JobNotice) -> bytes:
    """A follower's item as an SSE event."""
    if isinstance(item, Batch):
        return sse_token_event(item)
    if isinstance(item, JobEnd):
        return sse_end_event(item)
    return sse_status_event(item)


def sse_error_event(error: str) -> bytes:
    return ServerSentEvent(dumps({"error": error}), event="error").encode()


# -- WebSocket ------------------------------------------------------------------------------


def ws_tokens_message(batch: Batch) -> str:
    """The WebSocket ``tokens`` message of a batch, encoded once per batch."""
    message: str | None = batch.encoded.get("ws")
    if message is None:
        message = batch.encoded["ws"] = dumps({"type": "tokens", **tokens_message(batch)})
    return message


def ws_end_message(end: JobEnd) -> str:
    return dumps({"type": "end", **end_message(end)})


def ws_message(item: Batch | JobEnd | JobNotice) -> str:
    """A follower's item as a WebSocket message."""
    if isinstance(item, Batch):
        return ws_tokens_message(item)
    if isinstance(item, JobEnd):
        return ws_end_message(item)
    return dumps({"type": "status", **item.model_dump(mode="json")})


# -- the AI SDK's UI message stream ------------------------------------------------------------

# A job's message has one text part. Its id only has to be the same on text-start, every
# text-delta and text-end, so it is a constant and a batch's delta is the same bytes in every
# job's stream: cacheable on the batch.
UI_TEXT_ID = "text"
UI_DONE = b"data: [DONE]\n\n"
_UI_TEXT_END = b'data: {"type":"text-end","id":"text"}\n\n'


def ui_part(part: dict[str, Any]) -> bytes:
    """One part as the SDK writes it: ``data: <JSON>``, a blank line. JSON escapes every line
    break, so a part is always one ``data:`` line, and it starts with ``{``, so the one space
    an SSE parser drops after ``data:`` is the space written here."""
    return b"data: " + dumps(part).encode() + b"\n\n"


def ui_start(job_id: str) -> bytes:
    """The stream's first parts: the message (the job's id) and its text part."""
    return ui_part({"type": "start", "messageId": job_id}) + ui_part(
        {"type": "text-start", "id": UI_TEXT_ID}
    )


def ui_text_delta(batch: Batch) -> bytes:
    """A batch as one ``text-delta`` part, encoded once per batch."""
    part: bytes | None = batch.encoded.get("ui_stream")
    if part is None:
        part = ui_part({"type": "text-delta", "id": UI_TEXT_ID, "delta": "".join(batch.tokens)})
        batch.encoded["ui_stream"] = part
    return part


def ui_status(notice: JobNotice) -> bytes:
    """A changed producer: a transient data part, which the SDK hands to ``onData`` and keeps
    out of the message."""
    data = notice.model_dump(mode="json")
    return ui_part({"type": "data-status", "data": data, "transient": True})


def ui_end(end: JobEnd) -> bytes:
    """The text part closed, then ``finish``, ``error`` or ``abort`` by the end's status, and
    ``[DONE]``. The end record is the message's metadata in each case."""
    metadata = end_message(end)
    if end.status == JobStatus.DONE:
        closing = ui_part({"type": "finish", "finishReason": "stop", "messageMetadata": metadata})
    else:
        closing = ui_part({"type": "message-metadata", "messageMetadata": metadata})
        if end.status == JobStatus.CANCELLED:
            closing += ui_part({"type": "abort", "reason": "cancelled"})
        else:
            error = f"review failed: {end.error}" if end.error else "review failed"
            closing += ui_part({"type": "error", "errorText": error})
    return _UI_TEXT_END + closing + UI_DONE


def ui_error(error: str) -> bytes:
    """The stream broke after it started (the HTTP status was sent): an ``error`` part."""
    return _UI_TEXT_END + ui_part({"type": "error", "errorText": error}) + UI_DONE


def ui_stream_part(item: Batch | JobEnd | JobNotice) -> bytes:
    """A follower's item as UI message stream parts."""
    if isinstance(item, Batch):
        return ui_text_delta(item)
    if isinstance(item, JobEnd):
        return ui_end(item)
    return ui_status(item)
