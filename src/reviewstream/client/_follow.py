"""Following a job across connections: the ``Cursor`` that makes every token arrive once and in
order, and what each delivery mode's messages mean as batches and ends.

The connections themselves are ``ReviewstreamClient``'s (they use its HTTP client, credentials
and timeouts); everything here is free of I/O, so a new mode adds a parser here and a connection
there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncGenerator, Callable
from typing import Any

from httpx_sse import ServerSentEvent

from ..wire import CloseCode
from ._errors import ClientError, IntegrityError, Retry
from ._models import End, Page, TokenBatch, token_batch

# WebSocket close codes for answers that retrying cannot change, and the HTTP status of each.
_FINAL_CLOSE_CODES = {code.value: code.value - 4000 for code in CloseCode if code.final}


class Cursor:
    """The offset delivered so far; trims what the client has, refuses gaps.

    Followed from offset 0, it hashes the text delivered, so the end's ``sha256`` can prove it.
    """

    def __init__(self, job_id: str, offset: int) -> None:
        self.job_id = job_id
        self.offset = offset
        self.progressed = False
        self._digest = hashlib.sha256() if offset == 0 else None

    def check(self, end: End) -> None:
        """``IntegrityError`` unless the text delivered hashes to the end's ``sha256``."""
        if self._digest is None or end.sha256 is None or end.next_offset != self.offset:
            return
        got = self._digest.hexdigest()
        if got != end.sha256:
            raise IntegrityError(self.job_id, end.sha256, got)

    def take(self, batch: TokenBatch) -> TokenBatch | None:
        """The part of ``batch`` the caller has not seen yet; ``Retry`` on a gap."""
        if batch.offset > self.offset:
            raise Retry(f"gap: expected offset {self.offset}, got {batch.offset}")
        skip = self.offset - batch.offset
        if skip >= len(batch.tokens):
            return None
        fresh = TokenBatch(self.offset, batch.tokens[skip:], batch.ts[skip:])
        self.offset = fresh.next_offset
        self.progressed = True
        if self._digest is not None:
            for token in fresh.tokens:
                self._digest.update(token.encode())
        return fresh


async def page_items(cursor: Cursor, page: Page) -> AsyncGenerator[TokenBatch | End, None]:
    """A poll's page as what ``follow()`` yields: its fresh tokens, then the end if it is done."""
    if page.tokens and (fresh := cursor.take(TokenBatch(page.offset, page.tokens, page.ts))):
        yield fresh
    if page.done:
        yield End(page.status, page.next_offset, page.error, page.usage, page.sha256)


def sse_item(event: ServerSentEvent) -> TokenBatch | End | None:
    """An SSE event as a batch or the end; ``Retry`` if the server broke the stream."""
    if event.event == "token":
        return token_batch(event.json())
    if event.event == "end":
        return End.from_json(event.json())
    if event.event == "error":
        try:
            message = str(event.json()["error"])
        except (ValueError, TypeError, KeyError):
            message = event.data[:200]
        raise Retry(f"the server broke the stream: {message}")
    return None  # comments, heartbeats and unknown events


def websocket_item(raw: str | bytes) -> TokenBatch | End | None:
    """A WebSocket message as a batch or the end; ``None`` for the others (status changes)."""
    message = json.loads(raw)
    kind = message.get("type")
    if kind == "end":
        return End.from_json(message)
    if kind == "tokens":
        return token_batch(message)
    return None


def final_close(code: int | None, reason: str) -> ClientError | None:
    """The refusal a WebSocket close code carries, or ``None`` if reconnecting may help."""
    if code is None or code not in _FINAL_CLOSE_CODES:
        return None
    return ClientError(_FINAL_CLOSE_CODES[code], reason or f"closed {code}")


def websockets_connect() -> Callable[..., Any]:
    """``websockets``' client ``connect``, imported on first use: only this mode needs it."""
    try:
        from websockets.asyncio.client import connect
    except ImportError as e:
        raise ImportError(
            "follow(mode='websocket') needs the 'websockets' package (>= 13): "
            "pip install websockets"
        ) from e
    return connect
