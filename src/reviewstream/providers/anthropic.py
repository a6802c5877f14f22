"""The Anthropic Messages streaming API.

The stream is a sequence of typed events; only ``message_stop`` ends it successfully. Event
types and delta types we do not use (``ping``, ``input_json_delta``, ``thinking_delta``, or
ones added later) are skipped, as Anthropic's versioning policy asks clients to do.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import httpx
from httpx_sse import EventSource

from ..models import Usage
from .base import Prompt, require_key, secret
from .resilience import upstream_timeout
from .sse_http import (
    describe_error,
    error_event_text,
    int_or,
    json_object,
    post_sse,
    stream_error,
    truncated,
)

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["AnthropicProvider"]

PUBLIC_HOST = "api.anthropic.com"
_KEY_SETTING = "REVIEWSTREAM_ANTHROPIC_API_KEY"


class AnthropicProvider:
    """Streams a message from ``{base_url}/v1/messages``.

    ``api_key`` may be ``None`` only for a base URL other than the public API (a proxy or a
    local compatible server that needs no key).
    """

    name = "anthropic"

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str | None,
        version: str,
        connect_timeout: float,
    ) -> None:
        require_key(api_key, base_url, PUBLIC_HOST, _KEY_SETTING)
        self._http = http
        self._url = base_url.rstrip("/") + "/v1/messages"
        self._headers = {"anthropic-version": version}
        if api_key:
            self._headers["x-api-key"] = api_key
        self._timeout = upstream_timeout(connect_timeout)

    @classmethod
    def default_model(cls, settings: Settings) -> str:
        """``REVIEWSTREAM_ANTHROPIC_MODEL``."""
        return settings.anthropic_model

    @classmethod
    def validate(cls, model: str, settings: Settings) -> None:
        """Refuse the public API without a key; which models exist is the server's business."""
        key = secret(settings.anthropic_api_key)
        require_key(key, settings.anthropic_base_url, PUBLIC_HOST, _KEY_SETTING)

    @classmethod
    def from_settings(cls, settings: Settings, http: httpx.AsyncClient) -> AnthropicProvider:
        """A provider configured by the ``REVIEWSTREAM_ANTHROPIC_*`` settings."""
        return cls(
            http,
            base_url=settings.anthropic_base_url,
            api_key=secret(settings.anthropic_api_key),
            version=settings.anthropic_version,
            connect_timeout=settings.upstream_connect_timeout,
        )

    def stream(self, prompt: Prompt) -> AsyncGenerator[str | Usage, None]:
        """Yield the message's text deltas, then ``Usage`` if the server reported it."""
        body = {
            "model": prompt.model,
            "system": prompt.system,
            "messages": [{"role": "user", "content": prompt.user}],
            "max_tokens": prompt.max_tokens,
            "stream": True,
        }
        return post_sse(
            self._http,
            self._url,
            body=body,
            headers=self._headers,
            http_timeout=self._timeout,
            name=self.name,
            parse=_parse,
        )


async def _parse(source: EventSource) -> AsyncGenerator[str | Usage, None]:
    input_tokens: int | None = None
    output_tokens: int | None = None
    async with contextlib.aclosing(source.aiter_sse()) as events:
        async for event in events:
            if event.event == "error":
                raise stream_error("anthropic", error_event_text(event.data, _describe))
            if not event.data.strip():
                continue
            payload = json_object(event.data, "anthropic")
            kind = payload.get("type") or event.event
            if kind == "error":
                raise stream_error("anthropic", _describe(payload))
            if kind == "message_stop":
                break
            if kind in ("message_start", "message_delta"):
                # message_delta counts are cumulative, so the last one reported wins.
                holder = payload if kind == "message_delta" else _dict(payload.get("message"))
                usage = _dict(holder.get("usage"))
                input_tokens = int_or(usage.get("input_tokens"), input_tokens)
                output_tokens = int_or(usage.get("output_tokens"), output_tokens)
            elif kind == "content_block_start":
                if text := _text(payload.get("content_block"), "text"):
                    yield text
            elif kind == "content_block_delta":
                if text := _text(payload.get("delta"), "text_delta"):
                    yield text
        else:
            raise truncated("message_stop")
    if input_tokens is not None or output_tokens is not None:
        yield Usage(input_tokens=input_tokens, output_tokens=output_tokens)


def _describe(payload: object) -> str:
    # An error's data is {"type": "error", "error": {...}}; anything else is shown whole.
    if not isinstance(payload, dict):
        return str(payload)
    error = payload.get("error")
    return describe_error(error) if isinstance(error, dict) else json.dumps(payload)


def _text(part: object, kind: str) -> str:
    """The text of a content block or delta of type ``kind``; "" for any other part."""
    part = _dict(part)
    text = part.get("text") if part.get("type") == kind else None
    return text if isinstance(text, str) else ""


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
