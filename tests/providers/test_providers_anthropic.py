"""AnthropicProvider against a real loopback server speaking the Messages stream."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from pydantic import SecretStr

from reviewstream.errors import UpstreamProtocolError, UpstreamStatusError
from reviewstream.models import ReviewRequest, Usage
from reviewstream.providers import Prompt, build_provider
from reviewstream.providers.anthropic import AnthropicProvider
from reviewstream.providers.resilience import resilient_stream
from reviewstream.settings import Settings

from upstreams import (
    Reply,
    ScriptedUpstream,
    anthropic_event,
    anthropic_frames,
    collect,
    sse,
)

PROMPT = Prompt(
    system="You write reviews.",
    user="Review Ada.",
    model="claude-test",
    max_tokens=321,
    request=ReviewRequest(employee_name="Ada", employee_review_points="Shipped things."),
)
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


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


async def test_overloaded_error_event_is_an_error_with_its_message(
    upstream: ScriptedUpstream, provider: AnthropicProvider
) -> None:
    frames = anthropic_frames(["Hi"], stop=False)[:4]
    upstream.script(Reply(frames=[*frames, sse(OVERLOADED, event="error")]))

    with pytest.raises(UpstreamProtocolError, match="overloaded_error: Overloaded"):
        await collect(provider.stream(PROMPT))


async def test_error_event_with_plain_text_data_is_an_error(
    upstream: ScriptedUpstream, provider: AnthropicProvider
) -> None:
    frames = anthropic_frames(["Hi"], stop=False)[:4]
    upstream.script(Reply(frames=[*frames, sse("upstream connect error", event="error")]))

    with pytest.raises(UpstreamProtocolError, match="stream error: upstream connect error"):
        await collect(provider.stream(PROMPT))


async def test_eof_without_message_stop_is_truncated_not_success(
    upstream: ScriptedUpstream, provider: AnthropicProvider
) -> None:
    upstream.script(Reply(frames=anthropic_frames(["Hi", " there"], stop=False)))

    with pytest.raises(UpstreamProtocolError, match=r"without message_stop \(truncated\)"):
        await collect(provider.stream(PROMPT))


async def test_connection_cut_mid_body_is_truncated(
    upstream: ScriptedUpstream, provider: AnthropicProvider
) -> None:
    upstream.script(Reply(frames=anthropic_frames(["Hi"])[:4], cut=True))

    with pytest.raises(UpstreamProtocolError, match="truncated"):
        await collect(provider.stream(PROMPT))


async def test_malformed_json_is_a_protocol_error(
    upstream: ScriptedUpstream, provider: AnthropicProvider
) -> None:
    upstream.script(Reply(frames=[b"event: message_start\ndata: {nope\n\n"]))

    with pytest.raises(UpstreamProtocolError, match="malformed JSON"):
        await collect(provider.stream(PROMPT))


async def test_529_is_retryable_and_retried_before_the_first_token(
    upstream: ScriptedUpstream, provider: AnthropicProvider
) -> None:
    overloaded = Reply(
        status=529, content_type="application/json", body=json.dumps(OVERLOADED).encode()
    )
    upstream.script(overloaded)
    with pytest.raises(UpstreamStatusError, match="529.*Overloaded") as caught:
        await collect(provider.stream(PROMPT))
    assert caught.value.retryable

    upstream.reset()
    upstream.script(overloaded, Reply(frames=anthropic_frames(["ok"])))
    stream = resilient_stream(
        provider,
        PROMPT,
        max_retries=2,
        backoff_base=0.001,
        backoff_max=0.01,
        first_token_timeout=2,
        idle_timeout=2,
    )
    text, _ = await collect(stream)

    assert text == "ok"
    assert len(upstream.requests) == 2


async def test_401_is_not_retried(upstream: ScriptedUpstream, provider: AnthropicProvider) -> None:
    body = b'{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}'
    upstream.script(Reply(status=401, content_type="application/json", body=body))
    stream = resilient_stream(
        provider,
        PROMPT,
        max_retries=3,
        backoff_base=0.001,
        backoff_max=0.01,
        first_token_timeout=2,
        idle_timeout=2,
    )

    with pytest.raises(UpstreamStatusError, match="invalid x-api-key"):
        await collect(stream)

    assert len(upstream.requests) == 1


async def test_closing_the_stream_early_closes_the_upstream_connection(
    upstream: ScriptedUpstream, provider: AnthropicProvider
) -> None:
    frames = anthropic_frames([])[:3]
    delta = anthropic_event(
        "content_block_delta", index=0, delta={"type": "text_delta", "text": "x"}
    )
    frames += [item for _ in range(200) for item in (delta, 0.02)]
    upstream.script(Reply(frames=frames))

    stream = provider.stream(PROMPT)
    received = [await anext(stream) for _ in range(3)]
    await stream.aclose()

    assert received == ["x", "x", "x"]
    await asyncio.wait_for(upstream.client_gone.wait(), timeout=2)
    assert upstream.frames_sent < 50


async def test_public_api_without_a_key_is_refused_naming_the_setting(
    http: httpx.AsyncClient,
) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]

    with pytest.raises(ValueError, match="REVIEWSTREAM_ANTHROPIC_API_KEY"):
        build_provider("anthropic", settings, http)


async def test_from_settings_sends_key_version_and_model_path(
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

    text, _ = await collect(provider.stream(PROMPT))

    assert isinstance(provider, AnthropicProvider)
    assert text == "ok"
    [request] = upstream.requests
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == "sk-ant-s3"
    assert request.headers["anthropic-version"] == "2099-01-01"
