"""OpenAIProvider against a real loopback server speaking the Chat Completions stream.

What it shares with the Anthropic provider (failure statuses, truncation, in-band errors,
hanging up, keys) runs for both in ``test_hosted_providers``; here are the request it sends and
the deviations of compatible servers it tolerates.
"""

from __future__ import annotations

import httpx
import pytest

from reviewstream.models import ReviewRequest, Usage
from reviewstream.providers import Prompt
from reviewstream.providers.openai import OpenAIProvider

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
