"""``ReviewstreamClient``: the API's requests, and ``follow()``, which reconnects each mode's
connection from the offset delivered so far until the job's end."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, Callable
from types import TracebackType
from typing import Any, Self

import httpx
from httpx_sse import aconnect_sse

from ..wire import MODES, Mode
from ._errors import ClientError, ConnectionLost, Retry, refusal, transient
from ._follow import (
    Cursor,
    final_close,
    page_items,
    sse_item,
    websocket_item,
    websockets_connect,
)
from ._models import End, Job, Page, TokenBatch


class ReviewstreamClient:
    """A client of one reviewstream server.

    ``base_url`` is the server's root (a path prefix is kept). Pass ``http`` to share an
    ``httpx.AsyncClient`` (it is then not closed by ``aclose()``). ``max_retries`` bounds the
    reconnects in a row without a new token; the wait before each doubles from ``backoff`` up
    to ``backoff_max``. ``stream_idle_timeout`` bounds the silence on an SSE stream: keep it
    above the server's heartbeat interval (``REVIEWSTREAM_SSE_HEARTBEAT_SECONDS``). ``api_key``
    is sent as ``Authorization: Bearer`` on every request, stream and WebSocket handshake (a
    server with REVIEWSTREAM_API_KEYS).
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
        raise refusal(response)

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
        connect: Callable[[Cursor], AsyncGenerator[TokenBatch | End, None]] = {
            "sse": self._sse,
            "websocket": self._websocket,
            "long_poll": self._long_polls,
            "short_poll": lambda cursor: self._short_polls(cursor, poll_interval),
        }[mode]
        if mode == "websocket":
            websockets_connect()  # fail before the first request when it is missing
        cursor = Cursor(job_id, offset)
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
                raise Retry("the stream ended before the job's end")
            except (Retry, httpx.TransportError, OSError) as e:
                failures = 0 if cursor.progressed else failures + 1
                if failures > self.max_retries:
                    raise ConnectionLost(
                        f"following job {job_id} over {mode} failed {failures} times in a row "
                        f"at offset {cursor.offset}: {e or type(e).__name__}"
                    ) from e
                await asyncio.sleep(self._delay(max(failures, 1)))
            except ClientError as e:
                if e.status is None or not transient(e.status):
                    raise
                failures = 0 if cursor.progressed else failures + 1
                if failures > self.max_retries:
                    raise
                await asyncio.sleep(self._delay(max(failures, 1)))

    def _delay(self, attempt: int) -> float:
        base = min(self.backoff * 2.0 ** (attempt - 1), self.backoff_max)
        return base * random.uniform(0.8, 1.2)

    # One connection of each mode: yields fresh batches (through the cursor) and maybe the end.

    async def _sse(self, cursor: Cursor) -> AsyncGenerator[TokenBatch | End, None]:
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
                raise refusal(response)
            async for event in source.aiter_sse():
                item = sse_item(event)
                if isinstance(item, End):
                    yield item
                    return
                if item is not None and (fresh := cursor.take(item)) is not None:
                    yield fresh

    async def _websocket(self, cursor: Cursor) -> AsyncGenerator[TokenBatch | End, None]:
        connect = websockets_connect()
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
                    item = websocket_item(raw)
                    if isinstance(item, End):
                        yield item
                        return
                    if item is not None and (fresh := cursor.take(item)) is not None:
                        yield fresh
                code = socket.close_code
                if (refused := final_close(code, socket.close_reason or "")) is not None:
                    raise refused
                raise Retry(f"socket closed before the end (code {code})")
        except InvalidStatus as e:
            status = e.response.status_code
            raise ClientError(status, f"WebSocket handshake refused with HTTP {status}") from e
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd is not None else None
            reason = e.rcvd.reason if e.rcvd is not None else ""
            if (refused := final_close(code, reason)) is not None:
                raise refused from e
            raise Retry(f"socket closed (code {code}{': ' + reason if reason else ''})") from e

    async def _long_polls(self, cursor: Cursor) -> AsyncGenerator[TokenBatch | End, None]:
        job_id = cursor.job_id
        while True:
            page = await self.long_poll(job_id, cursor.offset)
            async for item in page_items(cursor, page):
                yield item

    async def _short_polls(
        self, cursor: Cursor, interval: float
    ) -> AsyncGenerator[TokenBatch | End, None]:
        job_id = cursor.job_id
        limit = 1000
        while True:
            page = await self.poll(job_id, cursor.offset, limit)
            async for item in page_items(cursor, page):
                yield item
            if len(page.tokens) < limit:  # a full page means more is stored already
                await asyncio.sleep(interval)
