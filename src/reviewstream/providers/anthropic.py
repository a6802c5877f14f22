"""The Anthropic Messages streaming API.

The stream is a sequence of typed events; only ``message_stop`` ends it successfully. Event
types and delta types we do not use (``ping``, ``input_json_delta``, ``thinking_delta``, or
ones added later) are skipped, as Anthropic's versioning policy asks clients to do.

A stored text (``prompt.continuation``) is continued by prefill: it is sent as the final
``assistant`` turn, which the model continues and the answer does not repeat. The API refuses a
final assistant turn that ends with whitespace, so the text is sent without it, and the same
whitespace is dropped from the start of the answer if the model writes it again (the stored
text already ends with it). Claude 4.6 and later refuse prefill altogether (400, "This model
does not support assistant message prefill"): on a 400 to a prefilled request the same attempt
continues by instruction instead — an extra user turn asking for the rest of the given text,
with a restated end of it dropped from the answer — and the provider keeps doing so for that
model.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import httpx
from httpx_sse import EventSource

from ..models import Usage
from . import prompts
from .base import Prompt, require_key, secret
from .continuation import (
    after_restated_tail,
    after_space,
    drop_leading,
    prefill_or_instruct,
    split_trailing_space,
)
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
        # Models that refused a prefilled continuation: continued by instruction from then on.
        self._refused: set[str] = set()

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
        """Yield the message's text deltas, then ``Usage`` if the server reported it.

        With ``prompt.continuation``, only the text after it (see the module docstring).
        """
        if not prompt.continuation:
            return self._post(self._body(prompt))
        if prompt.model in self._refused:
            return self._instructed(prompt)
        return prefill_or_instruct(
            lambda: self._prefilled(prompt),
            lambda: self._instructed(prompt),
            refusals=(400,),
            on_refused=lambda: self._refused.add(prompt.model),
            name=self.name,
        )

    def _prefilled(self, prompt: Prompt) -> AsyncGenerator[str | Usage, None]:
        sent, space = split_trailing_space(prompt.continuation)
        body = self._body(prompt)
        if sent:  # only whitespace stored: nothing to prefill, and an empty turn is refused
            body["messages"].append({"role": "assistant", "content": sent})
        return drop_leading(self._post(body), after_space(space))

    def _instructed(self, prompt: Prompt) -> AsyncGenerator[str | Usage, None]:
        body = self._body(prompt)
        instruction = prompts.continue_instruction(prompt.continuation)
        body["messages"].append({"role": "user", "content": instruction})
        return drop_leading(self._post(body), after_restated_tail(prompt.continuation))

    def _body(self, prompt: Prompt) -> dict[str, Any]:
        return {
            "model": prompt.model,
            "system": prompt.system,
            "messages": [{"role": "user", "content": prompt.user}],
            "max_tokens": prompt.max_tokens,
            "stream": True,
        }

    def _post(self, body: dict[str, Any]) -> AsyncGenerator[str | Usage, None]:
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
