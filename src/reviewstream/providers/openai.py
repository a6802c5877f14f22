"""The OpenAI Chat Completions streaming API, and every server that speaks it.

vLLM, Ollama's ``/v1``, llama.cpp's server and LM Studio all speak this protocol with small
deviations, so the parser is deliberately lenient about shape (role in any chunk; content null,
empty or absent; ``finish_reason`` next to content; usage absent, null or in a later chunk;
``choices: []``) and strict about endings: only ``data: [DONE]`` ends a stream successfully, and
an in-band error is an error.

Continuing a stored text (``prompt.continuation``) has no standard in this protocol, so
``REVIEWSTREAM_OPENAI_CONTINUATION`` chooses how the text reaches the model:

* ``prefill`` — the text (less trailing whitespace) as a final ``assistant`` message marked
  ``"prefix": true``, and ``"continue_final_message": true, "add_generation_prompt": false`` at
  the top level: what vLLM, SGLang and Aphrodite (any server rendering a Hugging Face chat
  template) need to leave that message open and continue it. llama.cpp's server continues a
  final assistant message by itself; these servers, and Ollama's, ignore fields they do not
  know.
* ``prefix`` — the same final assistant message with ``"prefix": true`` and nothing at the top
  level: for APIs that document that flag but refuse unknown fields (Mistral's API answers 422
  to ``continue_final_message``; DeepSeek's needs its ``/beta`` base URL for it).
* ``instruction`` — no prefill: an extra user message gives the text so far and asks for what
  comes next, verbatim from where it stops (``prompts.continue_instruction``). For APIs that
  answer a final assistant message with a new message of their own (api.openai.com, which also
  rejects unknown parameters). Any model can follow it, less exactly than a prefill: a restated
  end of the text (up to ``continuation.MAX_OVERLAP`` characters) is dropped from the answer.
* ``auto`` (default) — ``instruction`` for api.openai.com and Azure OpenAI, ``prefix`` for
  api.mistral.ai and DeepSeek's ``/beta`` URL (``instruction`` for its other URLs), ``prefill``
  anywhere else; and when a prefilled request is refused (400 or 422, before any text) the same
  attempt continues by instruction, and the provider keeps doing so for that model.

Both prefill modes drop an echo of the prefill at the start of the answer (Mistral's API sends
it back) and the whitespace the prefill was sent without, if the model writes it again.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, Literal

import httpx
from httpx_sse import EventSource

from ..models import Usage
from . import prompts
from .base import Prompt, require_key, secret
from .continuation import (
    after_echo,
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
    from ..settings import OpenAIContinuation, Settings

__all__ = ["OpenAIProvider", "auto_continuation"]

PUBLIC_HOST = "api.openai.com"
_KEY_SETTING = "REVIEWSTREAM_OPENAI_API_KEY"
# Statuses with which a host refuses a prefilled request it cannot take (unknown fields, or a
# final assistant message): under ``auto`` the attempt then continues by instruction.
_REFUSALS = (400, 422)

Mode = Literal["prefill", "prefix", "instruction"]


def auto_continuation(base_url: str) -> Mode:
    """The continuation mode ``auto`` starts with for a server at ``base_url``."""
    url = httpx.URL(base_url)
    host = url.host
    if host == PUBLIC_HOST or host.endswith(".openai.azure.com"):
        return "instruction"
    if host == "api.mistral.ai":
        return "prefix"
    if host == "api.deepseek.com":
        return "prefix" if url.path.startswith("/beta") else "instruction"
    return "prefill"


class OpenAIProvider:
    """Streams completions from ``{base_url}/chat/completions``.

    ``api_key`` may be ``None`` only for a self-hosted compatible server: the public API would
    answer 401 anyway, and failing at start-up is kinder than failing every job.
    ``continuation`` is how a stored text is continued (see the module docstring).
    """

    name = "openai"

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str | None,
        connect_timeout: float,
        continuation: OpenAIContinuation = "auto",
    ) -> None:
        require_key(api_key, base_url, PUBLIC_HOST, _KEY_SETTING)
        self._http = http
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = upstream_timeout(connect_timeout)
        self._auto = continuation == "auto"
        self._mode: Mode = auto_continuation(base_url) if continuation == "auto" else continuation
        # Models whose prefilled continuation this host refused (``auto`` only).
        self._refused: set[str] = set()

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
            continuation=settings.openai_continuation,
        )

    def continuation_mode(self, model: str) -> Mode:
        """How a stored text is continued for ``model`` now."""
        return "instruction" if model in self._refused else self._mode

    def stream(self, prompt: Prompt) -> AsyncGenerator[str | Usage, None]:
        """Yield the completion's text deltas, then ``Usage`` if the server reported it.

        With ``prompt.continuation``, only the text after it, continued the configured way.
        """
        if not prompt.continuation:
            return self._post(self._body(prompt))
        mode = self.continuation_mode(prompt.model)
        if mode == "instruction":
            return self._instructed(prompt)
        if not self._auto:
            return self._prefilled(prompt, mode)
        return prefill_or_instruct(
            lambda: self._prefilled(prompt, mode),
            lambda: self._instructed(prompt),
            refusals=_REFUSALS,
            on_refused=lambda: self._refused.add(prompt.model),
            name=self.name,
        )

    def _prefilled(self, prompt: Prompt, mode: Mode) -> AsyncGenerator[str | Usage, None]:
        sent, space = split_trailing_space(prompt.continuation)
        body = self._body(prompt)
        if sent:
            body["messages"].append({"role": "assistant", "content": sent, "prefix": True})
            if mode == "prefill":
                body |= {"continue_final_message": True, "add_generation_prompt": False}
            stream = drop_leading(self._post(body), after_echo(sent))
        else:  # only whitespace is stored: there is nothing to prefill
            stream = self._post(body)
        return drop_leading(stream, after_space(space))

    def _instructed(self, prompt: Prompt) -> AsyncGenerator[str | Usage, None]:
        body = self._body(prompt)
        instruction = prompts.continue_instruction(prompt.continuation)
        body["messages"].append({"role": "user", "content": instruction})
        return drop_leading(self._post(body), after_restated_tail(prompt.continuation))

    def _body(self, prompt: Prompt) -> dict[str, Any]:
        return {
            "model": prompt.model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
            "max_tokens": prompt.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
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
