"""OpenAIProvider against a real loopback server speaking the Chat Completions stream."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import httpx
import pytest
from pydantic import SecretStr

from reviewstream.errors import (
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from reviewstream.models import ReviewRequest, Usage
from reviewstream.providers import Prompt, build_provider
from reviewstream.providers.openai import OpenAIProvider
from reviewstream.settings import Settings

from conftest import free_port
from upstreams import (
    OPENAI_DONE,
    Reply,
    ScriptedUpstream,
    collect,
    openai_chunk,
    openai_frames,
    openai_usage,
    sse,
)

PROMPT = Prompt(
    system="You write reviews.",
    user="Review Ada.",
    model="gpt-test",
    max_tokens=321,
    request=ReviewRequest(employee_name="Ada", employee_review_points="Shipped things."),
)


@pytest.fixture
def provider(upstream: ScriptedUpstream, http: httpx.AsyncClient) -> OpenAIProvider:
    return OpenAIProvider(http, base_url=upstream.url + "/v1", api_key="sk-test", connect_timeout=2)


async def test_streams_text_and_usage_and_sends_the_expected_request(
    upstream: ScriptedUpstream, provider: OpenAIProvider
) -> None:
    upstream.script(Reply(frames=openai_frames(["Ada ", "ships", "."], usage=(11, 7))))

    text, usage = await collect(provider.stream(PROMPT))

    assert text == "Ada ships."
    assert usage == Usage(input_tokens=11, output_tokens=7)
    assert not upstream.client_gone.is_set()  # a stream read to its end is not a hang-up
    [request] = upstream.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.headers["accept"] == "text/event-stream"
    assert request.json == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "You write reviews."},
            {"role": "user", "content": "Review Ada."},
        ],
        "max_tokens": 321,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def _deviant(*frames: bytes) -> Reply:
    return Reply(frames=[*frames, OPENAI_DONE])


# Known deviations of compatible servers; each must still give "Hi there" (+ usage if sent).
DEVIATIONS = {
    "role in every chunk": _deviant(
        openai_chunk("Hi", role="assistant"),
        openai_chunk(" there", role="assistant"),
        openai_chunk(omit_content=True, role="assistant", finish_reason="stop"),
    ),
    "null, empty and absent content": _deviant(
        openai_chunk(None, role="assistant"),
        openai_chunk("Hi"),
        openai_chunk(""),
        openai_chunk(omit_content=True),
        openai_chunk(" there"),
        openai_chunk(None, finish_reason="stop"),
    ),
    "finish_reason with the last content": _deviant(
        openai_chunk("Hi"), openai_chunk(" there", finish_reason="stop")
    ),
    "usage null in every chunk": _deviant(
        openai_chunk("Hi", usage=None), openai_chunk(" there", finish_reason="stop", usage=None)
    ),
    "usage on the finishing chunk": _deviant(
        openai_chunk("Hi"),
        openai_chunk(
            " there", finish_reason="stop", usage={"prompt_tokens": 3, "completion_tokens": 2}
        ),
    ),
    "usage in a later chunk with choices []": _deviant(
        openai_chunk("Hi"),
        openai_chunk(" there"),
        openai_chunk(None, finish_reason="stop"),
        openai_usage(3, 2),
    ),
    "empty choices mid-stream and no usage": _deviant(
        sse({"choices": []}),
        openai_chunk("Hi"),
        sse({"choices": [], "usage": None}),
        openai_chunk(" there"),
    ),
    "keep-alive comments and a bare event": _deviant(
        b": keep-alive\n\n", openai_chunk("Hi"), b"event: ping\n\n", openai_chunk(" there")
    ),
}
USAGE = {
    "usage on the finishing chunk": Usage(input_tokens=3, output_tokens=2),
    "usage in a later chunk with choices []": Usage(input_tokens=3, output_tokens=2),
}


@pytest.mark.parametrize("case", list(DEVIATIONS))
async def test_tolerates_deviations_of_compatible_servers(
    case: str, upstream: ScriptedUpstream, provider: OpenAIProvider
) -> None:
    upstream.script(DEVIATIONS[case])

    text, usage = await collect(provider.stream(PROMPT))

    assert text == "Hi there"
    assert usage == USAGE.get(case)


@pytest.mark.parametrize(
    "frame",
    [
        sse({"error": {"message": "model is overloaded", "type": "server_error"}}),
        sse({"error": {"message": "model is overloaded"}}, event="error"),
        sse("model is overloaded", event="error"),
    ],
    ids=["data-error", "event-error-json", "event-error-text"],
)
async def test_in_band_error_is_an_error_with_its_message(
    frame: bytes, upstream: ScriptedUpstream, provider: OpenAIProvider
) -> None:
    upstream.script(Reply(frames=[openai_chunk("Hi"), frame, OPENAI_DONE]))

    with pytest.raises(UpstreamProtocolError, match="model is overloaded"):
        await collect(provider.stream(PROMPT))


async def test_eof_without_done_is_truncated_not_success(
    upstream: ScriptedUpstream, provider: OpenAIProvider
) -> None:
    upstream.script(Reply(frames=openai_frames(["Hi", " there"], done=False)))

    with pytest.raises(UpstreamProtocolError, match=r"without \[DONE\] \(truncated\)"):
        await collect(provider.stream(PROMPT))


async def test_connection_cut_mid_body_is_truncated(
    upstream: ScriptedUpstream, provider: OpenAIProvider
) -> None:
    upstream.script(Reply(frames=[openai_chunk("Hi")], cut=True))

    with pytest.raises(UpstreamProtocolError, match="truncated"):
        await collect(provider.stream(PROMPT))


async def test_malformed_json_is_a_protocol_error(
    upstream: ScriptedUpstream, provider: OpenAIProvider
) -> None:
    upstream.script(Reply(frames=[openai_chunk("Hi"), b'data: {"choices": [\n\n', OPENAI_DONE]))

    with pytest.raises(UpstreamProtocolError, match="malformed JSON"):
        await collect(provider.stream(PROMPT))


async def test_a_2xx_answer_that_is_not_sse_is_a_protocol_error(
    upstream: ScriptedUpstream, provider: OpenAIProvider
) -> None:
    upstream.script(Reply(content_type="application/json", body=b'{"choices": []}'))

    with pytest.raises(UpstreamProtocolError, match="text/event-stream"):
        await collect(provider.stream(PROMPT))


async def test_401_is_a_status_error_that_is_not_retryable(
    upstream: ScriptedUpstream, provider: OpenAIProvider
) -> None:
    body = b'{"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}'
    upstream.script(Reply(status=401, content_type="application/json", body=body))

    with pytest.raises(UpstreamStatusError, match="Incorrect API key") as caught:
        await collect(provider.stream(PROMPT))

    assert caught.value.status == 401
    assert not caught.value.retryable


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({"Retry-After": "3"}, 3.0), ({"retry-after-ms": "250", "Retry-After": "1"}, 0.25)],
)
async def test_429_carries_retry_after(
    headers: dict[str, str],
    expected: float,
    upstream: ScriptedUpstream,
    provider: OpenAIProvider,
) -> None:
    upstream.script(Reply(status=429, headers=headers, content_type="application/json", body=b"{}"))

    with pytest.raises(UpstreamStatusError) as caught:
        await collect(provider.stream(PROMPT))

    assert caught.value.retryable
    assert caught.value.retry_after == pytest.approx(expected)


async def test_huge_error_body_is_read_only_in_part(
    upstream: ScriptedUpstream, provider: OpenAIProvider
) -> None:
    upstream.script(Reply(status=500, content_type="text/plain", body=b"x" * 1_000_000))

    with pytest.raises(UpstreamStatusError) as caught:
        await collect(provider.stream(PROMPT))

    assert caught.value.retryable
    assert len(str(caught.value)) < 2200


async def test_refused_connection_is_unavailable(http: httpx.AsyncClient) -> None:
    provider = OpenAIProvider(
        http, base_url=f"http://127.0.0.1:{free_port()}/v1", api_key=None, connect_timeout=2
    )

    with pytest.raises(UpstreamUnavailable) as caught:
        await collect(provider.stream(PROMPT))

    assert caught.value.retryable


async def test_connect_timeout_is_a_timeout(http: httpx.AsyncClient) -> None:
    # A listening socket whose accept backlog is full never completes new handshakes.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        fillers = []
        try:
            for _ in range(8):
                s = socket.socket()
                s.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    s.connect(listener.getsockname())
                fillers.append(s)
            port = listener.getsockname()[1]
            provider = OpenAIProvider(
                http, base_url=f"http://127.0.0.1:{port}/v1", api_key=None, connect_timeout=0.2
            )
            with pytest.raises(UpstreamTimeout, match="ConnectTimeout"):
                await collect(provider.stream(PROMPT))
        finally:
            for s in fillers:
                s.close()


async def test_closing_the_stream_early_closes_the_upstream_connection(
    upstream: ScriptedUpstream, provider: OpenAIProvider
) -> None:
    frames: list[bytes | float] = [openai_chunk("Hi", role="assistant")]
    frames += [item for _ in range(200) for item in (openai_chunk(" more"), 0.02)]
    upstream.script(Reply(frames=frames))

    stream = provider.stream(PROMPT)
    received = [await anext(stream) for _ in range(3)]
    await stream.aclose()

    assert received == ["Hi", " more", " more"]
    await asyncio.wait_for(upstream.client_gone.wait(), timeout=2)
    assert upstream.frames_sent < 50


async def test_public_api_without_a_key_is_refused_naming_the_setting(
    http: httpx.AsyncClient,
) -> None:
    settings = Settings(_env_file=None, provider="openai")  # type: ignore[call-arg]

    with pytest.raises(ValueError, match="REVIEWSTREAM_OPENAI_API_KEY"):
        build_provider("openai", settings, http)


async def test_local_server_needs_no_key_and_gets_no_authorization(
    upstream: ScriptedUpstream, http: httpx.AsyncClient
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, openai_base_url=upstream.url + "/v1/", openai_model="llama3"
    )
    provider = build_provider("openai", settings, http)
    upstream.script(Reply(frames=openai_frames(["ok"])))

    text, _ = await collect(provider.stream(PROMPT))

    assert isinstance(provider, OpenAIProvider)
    assert text == "ok"
    assert upstream.requests[0].path == "/v1/chat/completions"
    assert "authorization" not in upstream.requests[0].headers


async def test_from_settings_uses_the_secret_key(
    upstream: ScriptedUpstream, http: httpx.AsyncClient
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, openai_base_url=upstream.url + "/v1", openai_api_key=SecretStr("sk-s3")
    )
    upstream.script(Reply(frames=openai_frames(["ok"])))

    await collect(build_provider("openai", settings, http).stream(PROMPT))

    assert upstream.requests[0].headers["authorization"] == "Bearer sk-s3"
