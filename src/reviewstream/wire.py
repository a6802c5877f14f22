"""The messages of the live modes, one shape for SSE and WebSocket.

Tokens: ``{"offset": N, "tokens": [...], "next_offset": M, "ts": [...]}`` (WebSocket adds
``"type": "tokens"``; SSE carries M as the event id). End: ``{"status", "next_offset", "error",
"usage"}`` (WebSocket adds ``"type": "end"``). ``ts`` is each token's server append time.
"""

from __future__ import annotations

import json
from typing import Any

from sse_starlette import ServerSentEvent

from .hub import Batch
from .models import JobEnd


def tokens_message(batch: Batch) -> dict[str, Any]:
    return {
        "offset": batch.offset,
        "tokens": batch.tokens,
        "next_offset": batch.next_offset,
        "ts": batch.ts,
    }


def end_message(end: JobEnd) -> dict[str, Any]:
    return end.model_dump(mode="json")


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def sse_token_event(batch: Batch) -> bytes:
    """The SSE ``token`` event of a batch (id = the offset after it), encoded once per batch."""
    if batch.sse is None:
        data = {"offset": batch.offset, "tokens": batch.tokens, "ts": batch.ts}
        event = ServerSentEvent(dumps(data), event="token", id=str(batch.next_offset))
        batch.sse = event.encode()
    return batch.sse


def ws_tokens_message(batch: Batch) -> str:
    """The WebSocket ``tokens`` message of a batch, encoded once per batch."""
    if batch.ws is None:
        batch.ws = dumps({"type": "tokens", **tokens_message(batch)})
    return batch.ws
