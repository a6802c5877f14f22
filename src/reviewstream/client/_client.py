"""The Python client; ``reviewstream.client`` documents it and re-exports its public names."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse

from ..wire import MODES, CloseCode, Mode

__all__ = [
    "ClientError",
    "ConnectionLost",
    "End",
    "IntegrityError",
    "Job",
    "MODES",
    "Mode",
    "Page",
    "ReviewstreamClient",
    "TokenBatch",
]

# WebSocket close codes for answers that retrying cannot change, and the HTTP status of each.
_FINAL_CLOSE_CODES = {code.value: code.value - 4000 for code in CloseCode if code.final}


class ClientError(Exception):
    """The API refused a request: ``status`` is the HTTP status, ``message`` its ``error`` text."""

    def __init__(self, status: int | None, message: str, detail: Any = None) -> None:
        super().__init__(f"HTTP {status}: {message}" if status is not None else message)
        self.status = status
        self.message = message
        self.detail = detail


class ConnectionLost(ClientError):
    """The server could not be reached, or kept failing, for ``max_retries`` attempts in a row."""

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


class IntegrityError(ClientError):
    """The text received does not hash to the ``sha256`` the job's end carries."""

    def __init__(self, job_id: str, expected: str, got: str) -> None:
        super().__init__(
            None, f"job {job_id}: the text received has SHA-256 {got}, the server's is {expected}"
        )


class _Retry(Exception):
    """A failure that reconnecting from the current offset may fix."""


@dataclass(frozen=True, slots=True)
class Job:
    """A created job: its id, status and the relative link of each delivery mode."""

    id: str
    status: str
    links: dict[str, str]


@dataclass(frozen=True, slots=True)
class Page:
    """A short or long poll answer: tokens ``[offset, next_offset)`` and where the job stands."""

    id: str
    status: str
    offset: int
    next_offset: int
    tokens: list[str]
    ts: list[float]
    done: bool
    error: str | None = None
    usage: dict[str, Any] | None = None
    attempts: int = 0
    sha256: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Page:
        """Build a page from the API's JSON answer."""
        tokens = list(data["tokens"])
        return cls(
            id=data["id"],
            status=data["status"],
            offset=int(data["offset"]),
            next_offset=int(data["next_offset"]),
            tokens=tokens,
            ts=_timestamps(data.get("ts"), len(tokens)),
            done=bool(data["done"]),
            error=data.get("error"),
            usage=data.get("usage"),
            attempts=int(data.get("attempts") or 0),
            sha256=data.get("sha256"),
        )


@dataclass(frozen=True, slots=True)
class TokenBatch:
    """Tokens ``[offset, next_offset)`` of a job, with the server's append time of each."""

    offset: int
    tokens: list[str]
    ts: list[float] = field(default_factory=list)

    @property
    def next_offset(self) -> int:
        """The offset to resume from after this batch."""
        return self.offset + len(self.tokens)

    @property
    def text(self) -> str:
        """The batch's tokens joined."""
        return "".join(self.tokens)


@dataclass(frozen=True, slots=True)
class End:
    """The end of a job: its final status, token count, error (if failed), usage, and the
    SHA-256 of its whole text."""

    status: str
    next_offset: int
    error: str | None = None
    usage: dict[str, Any] | None = None
    sha256: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> End:
        """Build an end from an SSE ``end`` event, a WebSocket ``end`` message or a last page."""
        return cls(
            status=data["status"],
            next_offset=int(data["next_offset"]),
            error=data.get("error"),
            usage=data.get("usage"),
            sha256=data.get("sha256"),
        )


def _timestamps(raw: Any, count: int) -> list[float]:
    """``ts`` may be one number for the batch or one per token; always return one per token."""
    if isinstance(raw, int | float):
        return [float(raw)] * count
    if isinstance(raw, list):
        return [float(t) for t in raw]
    return []


def _error_text(response: httpx.Response) -> tuple[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase, None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"], body.get("detail")
    return str(body)[:500], None


def _transient_status(status: int) -> bool:
    return status == 429 or status >= 500


class _Cursor:
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
        """The part of ``batch`` the caller has not seen yet; ``_Retry`` on a gap."""
        if batch.offset > self.offset:
            raise _Retry(f"gap: expected offset {self.offset}, got {batch.offset}")
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


class ReviewstreamClient:
    """A client of one reviewstream server.

    ``base_url`` is the server's root (a path prefix is kept). Pass ``http`` to share an
    ``httpx.AsyncClient`` (it is then not closed by ``aclose()``). ``max_retries`` bounds the
    reconnects in a row without a new token; the wait before each doubles from ``backoff`` up
    to ``backoff_max``. ``stream_idle_timeout`` bounds the silence on an SSE stream (the server
    sends a heartbeat every 15 s by default). ``api_key`` is sent as ``Authorization: Bearer``
    on every request, stream and WebSocket handshake (a server with REVIEWSTREAM_API_KEYS).
    """

    def __init__(
        self,
        base_url: str,
        http: httpx.AsyncClient | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 5,
        backoff: float = 0.2,
        backoff_max: float = 5.0,
        stream_idle_timeout: float = 60.0,
        api_key: str | None = None,
    ) -> None:
        self.base_url = httpx.URL(base_url.rstrip("/") + "/")
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout)
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.stream_idle_timeout = stream_idle_timeout

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client, if this client created it."""
        if self._owns_http:
            await self._http.aclose()

    def url(self, path: str) -> httpx.URL:
        """The absolute URL of an API path such as ``/jobs/abc``."""
        return self.base_url.join(path.lstrip("/"))

    async def _request(
        self, method: str, path: str, *, read_seconds: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One request; a non-2xx answer becomes ``ClientError`` with the API's message."""
        response = await self._http.request(
            method,
            self.url(path),
            timeout=read_seconds or self.timeout,
            headers=self._auth,
            **kwargs,
        )
        if response.is_success:
            return response
        message, detail = _error_text(response)
        raise ClientError(response.status_code, message, detail)

    async def create(self, employee_name: str, employee_review_points: str, **options: Any) -> Job:
        """Start a review job. ``options``: ``tone``, ``length_words``, ``provider``, ``model``."""
        body = {"employee_name": employee_name, "employee_review_points": employee_review_points}
        body.update({k: v for k, v in options.items() if v is not None})
        data = (await self._request("POST", "/jobs", json=body)).json()
        return Job(id=data["id"], status=data["status"], links=dict(data["links"]))

    async def poll(self, job_id: str, offset: int = 0, limit: int | None = None) -> Page:
        """Short poll: the tokens stored from ``offset`` on, at once."""
        params: dict[str, int] = {"offset": offset}
        if limit is not None:
            params["limit"] = limit
        response = await self._request("GET", f"/jobs/{job_id}", params=params)
        return Page.from_json(response.json())

    async def long_poll(
        self, job_id: str, offset: int = 0, limit: int | None = None, hold: float = 20.0
    ) -> Page:
        """Long poll: held by the server until a token arrives, the job ends, or ``hold`` s."""
        params: dict[str, float] = {"offset": offset, "timeout": hold}
        if limit is not None:
            params["limit"] = limit
        response = await self._request(
            "GET", f"/jobs/{job_id}/long-poll", params=params, read_seconds=hold + self.timeout
        )
        return Page.from_json(response.json())

    async def cancel(self, job_id: str) -> None:
        """Cancel a job; ``ClientError`` 409 if it already ended, 404 if unknown."""
        await self._request("DELETE", f"/jobs/{job_id}")

    async def follow(
        self,
        job_id: str,
        mode: Mode = "sse",
        offset: int = 0,
        poll_interval: float = 0.5,
    ) -> AsyncGenerator[TokenBatch | End, None]:
        """Yield the job's tokens from ``offset`` as ``TokenBatch``es, then one ``End``.

        Followed from offset 0, the text received is checked against the end's ``sha256``
        (``IntegrityError`` if it differs).

        Every token is yielded exactly once and in order, across reconnects: a dropped
        connection, a 5xx or 429 answer, or a stream cut before its end resumes from the last
        delivered offset after a backoff. ``ConnectionLost`` after ``max_retries`` failures in a
        row; ``ClientError`` at once for answers that retrying cannot change. Close it early
        with ``contextlib.aclosing`` (or ``aclose()``) to drop the connection at once.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        connect: Callable[[_Cursor], AsyncGenerator[TokenBatch | End, None]] = {
            "sse": self._sse,
            "websocket": self._websocket,
            "long_poll": self._long_polls,
            "short_poll": lambda cursor: self._short_polls(cursor, poll_interval),
        }[mode]
        if mode == "websocket":
            _websockets_connect()  # fail before the first request when it is missing
        cursor = _Cursor(job_id, offset)
        failures = 0
        while True:
            cursor.progressed = False
            try:
                # aclosing: when our caller stops early, the connection closes now, not at GC.
                async with contextlib.aclosing(connect(cursor)) as items:
                    async for item in items:
                        if isinstance(item, End):
                            cursor.check(item)
                            yield item
                            return
                        yield item
                raise _Retry("the stream ended before the job's end")
            except (_Retry, httpx.TransportError, OSError) as e:
                failures = 0 if cursor.progressed else failures + 1
                if failures > self.max_retries:
                    raise ConnectionLost(
                        f"following job {job_id} over {mode} failed {failures} times in a row "
                        f"at offset {cursor.offset}: {e or type(e).__name__}"
                    ) from e
                await asyncio.sleep(self._delay(max(failures, 1)))
            except ClientError as e:
                if e.status is None or not _transient_status(e.status):
                    raise
                failures = 0 if cursor.progressed else failures + 1
                if failures > self.max_retries:
                    raise
                await asyncio.sleep(self._delay(max(failures, 1)))

    def _delay(self, attempt: int) -> float:
        base = min(self.backoff * 2.0 ** (attempt - 1), self.backoff_max)
        return base * random.uniform(0.8, 1.2)

    # One connection of each mode: yields fresh batches (through the cursor) and maybe the end.

    async def _sse(self, cursor: _Cursor) -> AsyncGenerator[TokenBatch | End, None]:
        job_id = cursor.job_id
        timeout = httpx.Timeout(self.timeout, read=self.stream_idle_timeout)
        async with aconnect_sse(
            self._http,
            "GET",
            str(self.url(f"/jobs/{job_id}/events")),
            params={"offset": cursor.offset},
            headers=self._auth,
            timeout=timeout,
        ) as source:
            response = source.response
            if not response.is_success:
                await response.aread()
                message, detail = _error_text(response)
                raise ClientError(response.status_code, message, detail)
            async for event in source.aiter_sse():
                item = _sse_item(event)
                if isinstance(item, End):
                    yield item
                    return
                if item is not None and (fresh := cursor.take(item)) is not None:
                    yield fresh

    async def _websocket(self, cursor: _Cursor) -> AsyncGenerator[TokenBatch | End, None]:
        connect = _websockets_connect()
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        job_id = cursor.job_id
        url = self.url(f"/jobs/{job_id}/ws")
        url = url.copy_with(
            scheme="wss" if url.scheme == "https" else "ws", params={"offset": cursor.offset}
        )
        try:
            async with connect(
                str(url),
                open_timeout=self.timeout,
                compression=None,
                max_size=2**24,
                additional_headers=self._auth,
            ) as socket:
                async for raw in socket:
                    message = json.loads(raw)
                    kind = message.get("type")
                    if kind == "end":
                        yield End.from_json(message)
                        return
                    if kind == "tokens":
                        batch = TokenBatch(
                            int(message["offset"]),
                            list(message["tokens"]),
                            _timestamps(message.get("ts"), len(message["tokens"])),
                        )
                        if (fresh := cursor.take(batch)) is not None:
                            yield fresh
                code, reason = socket.close_code, socket.close_reason or ""
                if code in _FINAL_CLOSE_CODES:
                    raise ClientError(_FINAL_CLOSE_CODES[code], reason or f"closed {code}")
                raise _Retry(f"socket closed before the end (code {code})")
        except InvalidStatus as e:
            status = e.response.status_code
            raise ClientError(status, f"WebSocket handshake refused with HTTP {status}") from e
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd is not None else None
            reason = e.rcvd.reason if e.rcvd is not None else ""
            if code in _FINAL_CLOSE_CODES:
                raise ClientError(_FINAL_CLOSE_CODES[code], reason or f"closed {code}") from e
            raise _Retry(f"socket closed (code {code}{': ' + reason if reason else ''})") from e

    async def _long_polls(self, cursor: _Cursor) -> AsyncGenerator[TokenBatch | End, None]:
        job_id = cursor.job_id
        while True:
            page = await self.long_poll(job_id, cursor.offset)
            async for item in _page_items(cursor, page):
                yield item

    async def _short_polls(
        self, cursor: _Cursor, interval: float
    ) -> AsyncGenerator[TokenBatch | End, None]:
        job_id = cursor.job_id
        limit = 1000
        while True:
            page = await self.poll(job_id, cursor.offset, limit)
            async for item in _page_items(cursor, page):
                yield item
            if len(page.tokens) < limit:  # a full page means more is stored already
                await asyncio.sleep(interval)


async def _page_items(cursor: _Cursor, page: Page) -> AsyncGenerator[TokenBatch | End, None]:
    if page.tokens and (fresh := cursor.take(TokenBatch(page.offset, page.tokens, page.ts))):
        yield fresh
    if page.done:
        yield End(page.status, page.next_offset, page.error, page.usage, page.sha256)


def _sse_item(event: ServerSentEvent) -> TokenBatch | End | None:
    if event.event == "token":
        data = event.json()
        tokens = list(data["tokens"])
        return TokenBatch(int(data["offset"]), tokens, _timestamps(data.get("ts"), len(tokens)))
    if event.event == "end":
        return End.from_json(event.json())
    if event.event == "error":
        try:
            message = str(event.json()["error"])
        except (ValueError, TypeError, KeyError):
            message = event.data[:200]
        raise _Retry(f"the server broke the stream: {message}")
    return None  # comments, heartbeats and unknown events


def _websockets_connect() -> Callable[..., Any]:
    try:
        from websockets.asyncio.client import connect
    except ImportError as e:
        raise ImportError(
            "follow(mode='websocket') needs the 'websockets' package (>= 13): "
            "pip install websockets"
        ) from e
    return connect
