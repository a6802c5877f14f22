"""OpenAIProvider against a real loopback server speaking the Chat Completions stream.

What it shares with the Anthropic provider (failure statuses, truncation, in-band errors,
hanging up, keys) runs for both in ``test_hosted_providers``; here are the request it sends and
the deviations of compatible servers it tolerates.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from reviewstream.errors import UpstreamStatusError
from reviewstream.models import ReviewRequest, Usage
from reviewstream.providers import Prompt, build_provider, prompts
from reviewstream.providers.openai import OpenAIProvider, auto_continuation
from reviewstream.settings import OpenAIContinuation, Settings

from tests.support.upstreams import (
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


# --- continuing a stored text ---------------------------------------------------------------

STORED = "Ada led the payments migration. "
CONTINUED = dataclasses.replace(PROMPT, continuation=STORED)
PREFILL = {"role": "assistant", "content": "Ada led the payments migration.", "prefix": True}


def continuing(
    mode: OpenAIContinuation, upstream: ScriptedUpstream, http: httpx.AsyncClient
) -> OpenAIProvider:
    return OpenAIProvider(
        http,
        base_url=upstream.url + "/v1",
        api_key="sk-test",
        connect_timeout=2,
        continuation=mode,
    )


def expected_body(*extra_messages: dict[str, Any], **extra_fields: Any) -> dict[str, Any]:
    """The request of ``PROMPT`` with messages appended and top-level fields added."""
    return {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "You write reviews."},
            {"role": "user", "content": "Review Ada."},
            *extra_messages,
        ],
        "max_tokens": 321,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra_fields,
    }


CONTINUE_FINAL = {"continue_final_message": True, "add_generation_prompt": False}
INSTRUCTION = {"role": "user", "content": prompts.continue_instruction(STORED)}


@pytest.mark.parametrize(
    ("mode", "body"),
    [
        ("prefill", expected_body(PREFILL, **CONTINUE_FINAL)),
        ("prefix", expected_body(PREFILL)),
        ("instruction", expected_body(INSTRUCTION)),
        ("auto", expected_body(PREFILL, **CONTINUE_FINAL)),  # a server of one's own: prefill
    ],
)
async def test_each_continuation_mode_sends_its_request_and_yields_only_new_text(
    mode: OpenAIContinuation,
    body: dict[str, Any],
    upstream: ScriptedUpstream,
    http: httpx.AsyncClient,
) -> None:
    upstream.script(Reply(frames=openai_frames([" She", " mentors", " two."], usage=(30, 3))))

    text, usage = await collect(continuing(mode, upstream, http).stream(CONTINUED))

    assert STORED + text == "Ada led the payments migration. She mentors two."
    assert usage == Usage(input_tokens=30, output_tokens=3)
    [request] = upstream.requests
    assert request.json == body


def test_the_instruction_gives_the_text_and_asks_for_only_what_follows() -> None:
    instruction = prompts.continue_instruction(STORED)

    assert f"<partial>\n{STORED}\n</partial>" in instruction
    assert "only the text that comes next" in instruction
    assert "Do not repeat" in instruction


@pytest.mark.parametrize("mode", ["prefill", "prefix"])
@pytest.mark.parametrize(
    ("deltas", "expected"),
    [
        # Mistral's API sends the prefix back first; split anywhere, it is dropped.
        (["Ada led the payments migration.", " She mentors."], ["She mentors."]),
        (["Ada led the ", "payments migration. She", " mentors."], ["She", " mentors."]),
        # No echo: held only while the answer could still be one, then passed on unchanged.
        (["A", "da also", " mentors."], ["A", "da also", " mentors."]),
        ([" She", " mentors."], ["She", " mentors."]),
    ],
)
async def test_prefill_modes_drop_an_echo_of_the_prefill(
    mode: OpenAIContinuation,
    deltas: list[str],
    expected: list[str],
    upstream: ScriptedUpstream,
    http: httpx.AsyncClient,
) -> None:
    upstream.script(Reply(frames=openai_frames(deltas)))

    stream = continuing(mode, upstream, http).stream(CONTINUED)
    received = [item async for item in stream if isinstance(item, str)]

    assert received == expected


TAIL = "Ada led the payments migration and mentors two"


@pytest.mark.parametrize(
    ("stored", "deltas", "new_text"),
    [
        (TAIL, [" juniors."], " juniors."),  # no restatement
        (TAIL, ["two", " juniors."], " juniors."),  # the last word again
        (TAIL, ["mentors", " two", " juniors."], " juniors."),  # across deltas
        (TAIL, [TAIL + " juniors."], " juniors."),  # the whole text, in one delta
        (TAIL + " ", [" juniors."], "juniors."),  # a space the text already ends with
        (TAIL + "\n\n", ["\n", "\nShe", " also"], "She also"),
        ("Ada led the payments migra", ["migration", " went well."], "tion went well."),
        ("Ada led the mis", ["sion", "."], "sion."),  # a 1-letter "overlap" is just text
        ("She said no", [", no", " more."], ", no more."),  # not an overlap at all
        ("Ada led the", [" theme", " work."], " theme work."),  # " the" is the answer's own
        ("Ada led the", ["the", " theme", " work."], " theme work."),  # held, then dropped
        ("Ada led the pay", ["payments", " work."], "ments work."),  # a last word finished
    ],
)
async def test_instruction_drops_a_restated_end_of_the_text(
    stored: str,
    deltas: list[str],
    new_text: str,
    upstream: ScriptedUpstream,
    http: httpx.AsyncClient,
) -> None:
    upstream.script(Reply(frames=openai_frames(deltas)))

    text, _ = await collect(
        continuing("instruction", upstream, http).stream(
            dataclasses.replace(PROMPT, continuation=stored)
        )
    )

    assert text == new_text


async def test_instruction_looks_for_a_restatement_only_within_its_window(
    upstream: ScriptedUpstream, http: httpx.AsyncClient
) -> None:
    stored = " ".join(f"point{i}" for i in range(60))  # far longer than the 200-char window
    upstream.script(Reply(frames=openai_frames([stored[:150], stored[150:], " and more."])))

    text, _ = await collect(
        continuing("instruction", upstream, http).stream(
            dataclasses.replace(PROMPT, continuation=stored)
        )
    )

    assert text == stored + " and more."  # too long to be judged a restatement: kept


async def test_a_refused_prefill_is_an_error_when_prefill_was_chosen(
    upstream: ScriptedUpstream, http: httpx.AsyncClient
) -> None:
    upstream.script(Reply(status=400, content_type="application/json", body=b'{"error": {}}'))

    with pytest.raises(UpstreamStatusError) as caught:
        await collect(continuing("prefill", upstream, http).stream(CONTINUED))

    assert caught.value.status == 400
    assert len(upstream.requests) == 1


async def test_auto_falls_back_to_instruction_when_a_strict_host_answers_422(
    upstream: ScriptedUpstream, http: httpx.AsyncClient
) -> None:
    extra_forbidden = (
        b'{"object": "error", "message": {"detail": [{"type": "extra_forbidden",'
        b' "loc": ["body", "continue_final_message"]}]}, "type": "invalid_request_error"}'
    )
    upstream.script(
        Reply(status=422, content_type="application/json", body=extra_forbidden),
        Reply(frames=openai_frames(["She", " mentors."])),
    )
    provider = continuing("auto", upstream, http)

    text, _ = await collect(provider.stream(CONTINUED))

    assert text == "She mentors."
    assert [r.json for r in upstream.requests] == [
        expected_body(PREFILL, **CONTINUE_FINAL),
        expected_body(INSTRUCTION),
    ]
    assert provider.continuation_mode("gpt-test") == "instruction"
    assert provider.continuation_mode("another-model") == "prefill"


@pytest.mark.parametrize(
    ("base_url", "mode"),
    [
        ("https://api.openai.com/v1", "instruction"),
        ("https://my-team.openai.azure.com/openai/v1", "instruction"),
        ("https://api.mistral.ai/v1", "prefix"),
        ("https://api.deepseek.com/beta", "prefix"),
        ("https://api.deepseek.com/v1", "instruction"),  # prefix needs the /beta URL
        ("http://localhost:8000/v1", "prefill"),  # vLLM, SGLang, llama.cpp, Ollama...
        ("https://llm.internal.example/v1", "prefill"),
    ],
)
def test_auto_picks_a_mode_by_host(base_url: str, mode: str) -> None:
    assert auto_continuation(base_url) == mode


def test_the_continuation_setting_reaches_the_provider(
    monkeypatch: pytest.MonkeyPatch, http: httpx.AsyncClient
) -> None:
    monkeypatch.setenv("REVIEWSTREAM_OPENAI_CONTINUATION", "prefix")
    settings = Settings(_env_file=None, openai_base_url="http://127.0.0.1:1/v1")  # type: ignore[call-arg]

    provider = build_provider("openai", settings, http)

    assert settings.openai_continuation == "prefix"
    assert isinstance(provider, OpenAIProvider)
    assert provider.continuation_mode("any") == "prefix"
    with pytest.raises(ValidationError):
        Settings(_env_file=None, openai_continuation="echo")  # type: ignore[call-arg, arg-type]


@pytest.mark.parametrize(("deltas", "new_text"), [(["two"], ""), (["mentors"], "mentors")])
async def test_an_answer_that_ends_while_held_is_judged_whole(
    deltas: list[str], new_text: str, upstream: ScriptedUpstream, http: httpx.AsyncClient
) -> None:
    upstream.script(Reply(frames=openai_frames(deltas, usage=None)))  # no usage to end on

    text, usage = await collect(
        continuing("instruction", upstream, http).stream(
            dataclasses.replace(PROMPT, continuation=TAIL)
        )
    )

    assert (text, usage) == (new_text, None)
