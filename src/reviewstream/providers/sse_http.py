"""What both hosted providers share: POST a JSON body and stream the SSE answer, and read it.

:func:`post_sse` is the HTTP part; the rest are the pieces of parsing the two streaming formats
have in common (JSON event data, error objects, token counts, the errors for an in-band error
and for a stream that ends before its end marker).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any

import httpx
from httpx_sse import EventSource, SSEError, aconnect_sse

from ..errors import UpstreamInterrupted, UpstreamProtocolError
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


def describe_error(error: object, *, kinds: Sequence[str] = ("type",)) -> str:
    """``kind: message`` for an API error object, ``kind`` from the first of ``kinds`` it has.

    Both APIs send errors as ``{"type": ..., "message": ...}``; an object without a message is
    shown as its JSON, and anything that is not an object as its text.
    """
    if not isinstance(error, dict):
        return str(error)
    message = error.get("message") or json.dumps(error)
    kind = next((error[key] for key in kinds if error.get(key)), None)
    return f"{kind}: {message}" if kind else str(message)


def error_event_text(data: str, describe: Callable[[Any], str]) -> str:
    """The message of an ``event: error`` frame: its JSON data put by ``describe``, or its text."""
    try:
        value = json.loads(data)
    except ValueError:
        return data.strip() or "(no message)"
    return describe(value)


def stream_error(provider: str, message: str) -> UpstreamProtocolError:
    """The error for an error the upstream reported inside its stream."""
    return UpstreamProtocolError(f"{provider} stream error: {message}")


def truncated(end_marker: str) -> UpstreamInterrupted:
    """The error for a stream that ended cleanly but before ``end_marker``."""
    return UpstreamInterrupted(f"upstream stream ended without {end_marker} (truncated)")


def int_or(value: object, default: int | None = None) -> int | None:
    """``value`` if it is an integer (a bool is not), else ``default``: a reported token count."""
    return value if isinstance(value, int) and not isinstance(value, bool) else default
