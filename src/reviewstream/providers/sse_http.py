"""POST a JSON body and stream the SSE answer: the HTTP part both hosted providers share."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import httpx
from httpx_sse import EventSource, SSEError, aconnect_sse

from ..errors import UpstreamProtocolError
from ..models import Usage
from .resilience import check_status, wrap_httpx_error

Parser = Callable[[EventSource], AsyncGenerator[str | Usage, None]]


async def post_sse(
    http: httpx.AsyncClient,
    url: str,
    *,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    http_timeout: httpx.Timeout,
    name: str,
    parse: Parser,
) -> AsyncGenerator[str | Usage, None]:
    """Yield what ``parse`` makes of the event stream; errors become ``ProviderError``s.

    Closing this generator closes the response, which hangs up the upstream connection.
    """
    answered = False
    try:
        async with aconnect_sse(
            http, "POST", url, json=body, headers=dict(headers), timeout=http_timeout
        ) as source:
            answered = True
            await check_status(source.response, name)
            # Explicit closing of the nested generators, so nothing is left for the garbage
            # collector to finalise after the response is gone.
            async with contextlib.aclosing(parse(source)) as items:
                async for item in items:
                    yield item
    except httpx.HTTPError as exc:
        raise wrap_httpx_error(exc, name, answered=answered) from exc
    except SSEError as exc:  # raised for a 2xx answer that is not text/event-stream
        raise UpstreamProtocolError(f"{name}: {exc}") from exc


def json_object(data: str, provider: str) -> dict[str, Any]:
    """An event's data as a JSON object; anything else is a protocol error naming it."""
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise UpstreamProtocolError(f"{provider} sent malformed JSON: {data[:200]!r}") from exc
    if not isinstance(value, dict):
        raise UpstreamProtocolError(f"{provider} sent a non-object event: {data[:200]!r}")
    return value
