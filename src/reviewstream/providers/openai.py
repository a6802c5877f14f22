"""The OpenAI Chat Completions streaming API, and every server that speaks it.

vLLM, Ollama's ``/v1``, llama.cpp's server and LM Studio all speak this protocol with small
deviations, so the parser is deliberately lenient about shape (role in any chunk; content null,
empty or absent; ``finish_reason`` next to content; usage absent, null or in a later chunk;
``choices: []``) and strict about endings: only ``data: [DONE]`` ends a stream successfully, and
an in-band error is an error.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

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

__all__ = ["OpenAIProvider"]

PUBLIC_HOST = "api.openai.com"
_KEY_SETTING = "REVIEWSTREAM_OPENAI_API_KEY"


class OpenAIProvider:
    """Streams completions from ``{base_url}/chat/completions``.

    ``api_key`` may be ``None`` only for a self-hosted compatible server: the public API would
    answer 401 anyway, and failing at start-up is kinder than failing every job.
    """

    name = "openai"

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str | None,
        connect_timeout: float,
    ) -> None:
        require_key(api_key, base_url, PUBLIC_HOST, _KEY_SETTING)
        self._http = http
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = upstream_timeout(connect_timeout)

    @classmethod
    def default_model(cls, settings: Settings) -> str:
        """``REVIEWSTREAM_OPENAI_MODEL``."""
        return settings.openai_model

    @classmethod
    def validate(cls, model: str, settings: Settings) -> None:
        """Refuse the public API without a key; which models exist is the server's business."""
        key = secret(settings.openai_api_key)
        require_key(key, settings.openai_base_url, PUBLIC_HOST, _KEY_SETTING)

    @classmethod
    def from_settings(cls, settings: Settings, http: httpx.AsyncClient) -> OpenAIProvider:
        """A provider configured by the ``REVIEWSTREAM_OPENAI_*`` settings."""
        return cls(
            http,
            base_url=settings.openai_base_url,
            api_key=secret(settings.openai_api_key),
            connect_timeout=settings.upstream_connect_timeout,
        )

    def stream(self, prompt: Prompt) -> AsyncGenerator[str | Usage, None]:
        """Yield the completion's text deltas, then ``Usage`` if the server reported it."""
        body = {
            "model": prompt.model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
            "max_tokens": prompt.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
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
    usage: Usage | None = None
    async with contextlib.aclosing(source.aiter_sse()) as events:
        async for event in events:
            if event.event == "error":
                raise stream_error("openai", error_event_text(event.data, _describe_event))
            data = event.data.strip()
            if data == "[DONE]":
                break
            if not data:
                continue
            chunk = json_object(data, "openai")
            if chunk.get("error"):
                raise stream_error("openai", _describe(chunk["error"]))
            for choice in chunk.get("choices") or ():
                # n=1 is all we ask for; a server that sends more choices gets the first one read.
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta") or {}
                content = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(content, str) and content:
                    yield content
            reported = chunk.get("usage")
            if isinstance(reported, dict):
                usage = Usage(
                    input_tokens=int_or(reported.get("prompt_tokens")),
                    output_tokens=int_or(reported.get("completion_tokens")),
                )
        else:
            raise truncated("[DONE]")
    if usage is not None:
        yield usage


def _describe(error: object) -> str:
    # Compatible servers name the kind of error in "type" or, failing that, in "code".
    return describe_error(error, kinds=("type", "code"))


def _describe_event(value: object) -> str:
    # An error event's data is the {"error": ...} envelope or the error object alone.
    if isinstance(value, dict) and "error" in value:
        value = value["error"]
    return _describe(value)
