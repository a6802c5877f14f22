"""The messages of the live modes, one shape for SSE and WebSocket.

Tokens: ``{"offset": N, "tokens": [...], "next_offset": M, "ts": [...]}`` (WebSocket adds
``"type": "tokens"``; SSE carries M as the event id). End: ``{"status", "next_offset", "error",
"usage"}`` (WebSocket adds ``"type": "end"``). ``ts`` is each token's server append time.
"""

from __future__ import annotations

import json
from typing import Any

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
