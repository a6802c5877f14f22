"""AnthropicProvider against a real loopback server speaking the Messages stream.

What it shares with the OpenAI provider (failure statuses, truncation, in-band errors, hanging
up, keys) runs for both in ``test_hosted_providers``; here are the request it sends, the event
types it skips and the API version it names.
"""

from __future__ import annotations

import dataclasses

import httpx
import pytest
from pydantic import SecretStr

from reviewstream.models import ReviewRequest, Usage
from reviewstream.providers import Prompt, build_provider, prompts
from reviewstream.providers.anthropic import AnthropicProvider
from reviewstream.settings import Settings

from tests.support.upstreams import (
    Reply,
    ScriptedUpstream,
    anthropic_event,
    anthropic_frames,
    collect,
)

PROMPT = Prompt(
    system="You write reviews.",
    user="Review Ada.",
    model="claude-test",
    max_tokens=321,
    request=ReviewRequest(employee_name="Ada", employee_review_points="Shipped things."),
)


@pytest.fixture
def provider(upstream: ScriptedUpstream, http: httpx.AsyncClient) -> AnthropicProvider:
    return AnthropicProvider(
        http,
        base_url=upstream.url,
        api_key="sk-ant-test",
        version="2023-06-01",
        connect_timeout=2,
    )


async def test_streams_text_and_usage_and_sends_the_expected_request(
    upstream: ScriptedUpstream, provider: AnthropicProvider
) -> None:
    upstream.script(
        Reply(frames=anthropic_frames(["Ada ", "ships", "."], input_tokens=13, output_tokens=9))
    )

    text, usage = await collect(provider.stream(PROMPT))

    assert text == "Ada ships."
    assert usage == Usage(input_tokens=13, output_tokens=9)
    [request] = upstream.requests
    assert (request.method, request.path) == ("POST", "/v1/messages")
    assert request.headers["x-api-key"] == "sk-ant-test"
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    assert request.json == {
        "model": "claude-test",
        "system": "You write reviews.",
        "messages": [{"role": "user", "content": "Review Ada."}],
        "max_tokens": 321,
        "stream": True,
    }


async def test_ignores_other_delta_and_event_types(
    upstream: ScriptedUpstream, provider: AnthropicProvider
) -> None:
    frames = anthropic_frames(["Hi", " there"])
    extras = [
        anthropic_event(
            "content_block_delta", index=1, delta={"type": "thinking_delta", "thinking": "hmm"}
        ),
        anthropic_event(
            "content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": "{"}
        ),
        anthropic_event(  # a delta type we do not know, even one carrying text, is skipped
            "content_block_delta", index=3, delta={"type": "future_delta", "text": "NOT THIS"}
        ),
        anthropic_event("some_future_event", detail=1),
        anthropic_event("ping"),
        b": comment\n\n",
    ]
    upstream.script(Reply(frames=[*frames[:4], *extras, *frames[4:]]))

    text, usage = await collect(provider.stream(PROMPT))

    assert text == "Hi there"
    assert usage == Usage(input_tokens=13, output_tokens=9)


async def test_from_settings_sends_the_configured_version(
    upstream: ScriptedUpstream, http: httpx.AsyncClient
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        anthropic_base_url=upstream.url + "/",
        anthropic_api_key=SecretStr("sk-ant-s3"),
        anthropic_version="2099-01-01",
    )
    provider = build_provider("anthropic", settings, http)
    upstream.script(Reply(frames=anthropic_frames(["ok"])))

    await collect(provider.stream(PROMPT))

    [request] = upstream.requests
    assert request.headers["anthropic-version"] == "2099-01-01"


# --- continuing a stored text ---------------------------------------------------------------

STORED = "Ada led the payments migration.\n\n"


async def test_a_continuation_is_the_final_assistant_turn_without_trailing_whitespace(
    upstream: ScriptedUpstream, provider: AnthropicProvider
) -> None:
    upstream.script(Reply(frames=anthropic_frames(["\n\nShe", " mentors", " two."])))

    text, usage = await collect(provider.stream(dataclasses.replace(PROMPT, continuation=STORED)))

    assert STORED + text == "Ada led the payments migration.\n\nShe mentors two."
    assert usage == Usage(input_tokens=13, output_tokens=9)
    [request] = upstream.requests
    assert request.json == {
        "model": "claude-test",
        "system": "You write reviews.",
        "messages": [
            {"role": "user", "content": "Review Ada."},
            {"role": "assistant", "content": "Ada led the payments migration."},
        ],
        "max_tokens": 321,
        "stream": True,
    }


async def test_a_model_that_refuses_prefill_is_asked_by_instruction(
    upstream: ScriptedUpstream, provider: AnthropicProvider
) -> None:
    refusal = (
        b'{"type": "error", "error": {"type": "invalid_request_error", "message": "This model'
        b" does not support assistant message prefill. The conversation must end with a user"
        b' message."}}'
    )
    upstream.script(
        Reply(status=400, content_type="application/json", body=refusal),
        Reply(frames=anthropic_frames(["She", " mentors", " two."])),
    )
    prompt = dataclasses.replace(PROMPT, model="claude-sonnet-4-6", continuation=STORED)

    text, _ = await collect(provider.stream(prompt))

    assert text == "She mentors two."
    prefilled, instructed = upstream.requests
    assert prefilled.json["messages"][-1]["role"] == "assistant"
    assert instructed.json == {
        "model": "claude-sonnet-4-6",
        "system": "You write reviews.",
        "messages": [
            {"role": "user", "content": "Review Ada."},
            {"role": "user", "content": prompts.continue_instruction(STORED)},
        ],
        "max_tokens": 321,
        "stream": True,
    }
