"""The cases OpenAIProvider and AnthropicProvider share, run once per provider.

Both stream through ``sse_http`` and ``resilience``, so a failure status, a broken connection, a
stream that stops before its end marker or a closed iterator must end the same way whichever
API is behind it. Each case runs against the real loopback upstream speaking that provider's
format; what differs between the two (frames, paths, key headers, error bodies) is in
:class:`Hosted`. The request each API expects, and each format's quirks, stay in the provider's
own module.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import socket
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from reviewstream.errors import (
    ProviderConfigError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from reviewstream.models import ReviewRequest, Usage
from reviewstream.providers import (
    Prompt,
    Provider,
    build_provider,
    prompts,
    provider_class,
    validate_job,
)
from reviewstream.providers.anthropic import AnthropicProvider
from reviewstream.providers.openai import OpenAIProvider
from reviewstream.providers.resilience import resilient_stream
from reviewstream.settings import ProviderName, Settings

from tests.support.servers import free_port
from tests.support.upstreams import (
    OPENAI_DONE,
    Frame,
    Reply,
    ScriptedUpstream,
    anthropic_event,
    anthropic_frames,
    collect,
    openai_chunk,
    openai_frames,
    sse,
)

PROMPT = Prompt(
    system="You write reviews.",
    user="Review Ada.",
    model="test-model",
    max_tokens=321,
    request=ReviewRequest(employee_name="Ada", employee_review_points="Shipped things."),
)
ANTHROPIC_OVERLOADED = {
    "type": "error",
    "error": {"type": "overloaded_error", "message": "Overloaded"},
}


@dataclass(frozen=True)
class Hosted:
    """One hosted API as the shared cases see it."""

    name: ProviderName
    cls: type[OpenAIProvider] | type[AnthropicProvider]
    root: str  # appended to the upstream's URL to make the base URL setting
    path: str  # where the provider POSTs, below the upstream's URL
    key_setting: str
    key_header: str
    key_format: str  # how the key appears in ``key_header``
    opening: list[Frame]  # a stream's frames before its first text
    delta: Callable[[str], bytes]  # a frame carrying one piece of text
    well_formed: Callable[[list[str]], list[Frame]]  # a whole stream of these texts
    end: bytes  # the frame that ends a stream successfully
    end_marker: str  # how the truncation error names ``end``
    malformed: bytes  # a frame whose JSON does not parse
    # In-band errors: case -> (frame, the error's whole message).
    errors: dict[str, tuple[bytes, str]]
    unauthorized: tuple[bytes, str]  # a 401 body, and a part of its message
    overloaded: tuple[int, bytes, str]  # a retryable status, its body, a pattern of its message
    prefill: Callable[[str], dict[str, Any]]  # the final message that prefills this text
    prefill_refused: bytes  # a 400 body refusing a prefilled request

    def settings(self, base_url: str, api_key: str | None = None, **more: Any) -> Settings:
        """Settings pointing this provider at ``base_url``."""
        fields: dict[str, Any] = {
            f"{self.name}_base_url": base_url,
            f"{self.name}_api_key": SecretStr(api_key) if api_key else None,
        }
        return Settings(_env_file=None, **fields, **more)  # type: ignore[call-arg]

    def unfinished(self, texts: list[str]) -> list[Frame]:
        """A well-formed stream of ``texts`` without its end marker."""
        *frames, end = self.well_formed(texts)
        assert end == self.end
        return frames

    def begun(self) -> list[Frame]:
        """The frames of a stream that has sent "Hi" and is not finished."""
        return [*self.opening, self.delta("Hi")]

    def endless(self) -> list[Frame]:
        """A stream of "x" deltas that goes on far longer than any test reads."""
        return [*self.opening, *[item for _ in range(200) for item in (self.delta("x"), 0.02)]]


def in_band_errors(
    name: str, *, data: tuple[Any, str], event: tuple[Any, str], text: str
) -> dict[str, tuple[bytes, str]]:
    """An error inside the stream three ways: in a data frame, as an error event's JSON or text.

    ``data`` and ``event`` are (payload, what the error says of it); ``text`` is said as is.
    """
    return {
        "data-error": (sse(data[0]), f"{name} stream error: {data[1]}"),
        "event-error-json": (sse(event[0], event="error"), f"{name} stream error: {event[1]}"),
        "event-error-text": (sse(text, event="error"), f"{name} stream error: {text}"),
    }


HOSTED = {
    "openai": Hosted(
        name="openai",
        cls=OpenAIProvider,
        root="/v1",
        path="/v1/chat/completions",
        key_setting="REVIEWSTREAM_OPENAI_API_KEY",
        key_header="authorization",
        key_format="Bearer {}",
        opening=openai_frames([])[:1],
        delta=openai_chunk,
        well_formed=openai_frames,
        end=OPENAI_DONE,
        end_marker="[DONE]",
        malformed=b'data: {"choices": [\n\n',
        errors=in_band_errors(
            "openai",
            data=(
                {"error": {"message": "model is overloaded", "type": "server_error"}},
                "server_error: model is overloaded",
            ),
            event=({"error": {"message": "model is overloaded"}}, "model is overloaded"),
            text="model is overloaded",
        ),
        unauthorized=(
            b'{"error": {"message": "Incorrect API key provided",'
            b' "type": "invalid_request_error"}}',
            "Incorrect API key",
        ),
        overloaded=(
            503,
            b'{"error": {"message": "The engine is currently overloaded", "type": "server_error"}}',
            "503.*overloaded",
        ),
        prefill=lambda text: {"role": "assistant", "content": text, "prefix": True},
        prefill_refused=(
            b'{"error": {"message": "Unrecognized request argument supplied:'
            b' continue_final_message", "type": "invalid_request_error"}}'
        ),
    ),
    "anthropic": Hosted(
        name="anthropic",
        cls=AnthropicProvider,
        root="",
        path="/v1/messages",
        key_setting="REVIEWSTREAM_ANTHROPIC_API_KEY",
        key_header="x-api-key",
        key_format="{}",
        opening=anthropic_frames([])[:3],
        delta=lambda text: anthropic_event(
            "content_block_delta", index=0, delta={"type": "text_delta", "text": text}
        ),
        well_formed=anthropic_frames,
        end=anthropic_event("message_stop"),
        end_marker="message_stop",
        malformed=b"event: message_start\ndata: {nope\n\n",
        errors=in_band_errors(
            "anthropic",
            data=(ANTHROPIC_OVERLOADED, "overloaded_error: Overloaded"),
            event=(ANTHROPIC_OVERLOADED, "overloaded_error: Overloaded"),
            text="upstream connect error",
        ),
        unauthorized=(
            b'{"type":"error","error":{"type":"authentication_error",'
            b'"message":"invalid x-api-key"}}',
            "invalid x-api-key",
        ),
        overloaded=(529, json.dumps(ANTHROPIC_OVERLOADED).encode(), "529.*Overloaded"),
        prefill=lambda text: {"role": "assistant", "content": text},
        prefill_refused=(
            b'{"type": "error", "error": {"type": "invalid_request_error", "message": "This model'
            b" does not support assistant message prefill. The conversation must end with a user"
            b' message."}}'
        ),
    ),
}


@pytest.fixture(params=list(HOSTED))
def hosted(request: pytest.FixtureRequest) -> Hosted:
    return HOSTED[request.param]


@pytest.fixture
def provider(hosted: Hosted, upstream: ScriptedUpstream, http: httpx.AsyncClient) -> Provider:
    settings = hosted.settings(upstream.url + hosted.root, "sk-test", upstream_connect_timeout=2)
    return build_provider(hosted.name, settings, http)


def retrying(provider: Provider, max_retries: int) -> AsyncGenerator[str | Usage, None]:
    """``provider``'s stream under ``resilient_stream`` with quick retries."""
    return resilient_stream(
        provider,
        PROMPT,
        max_retries=max_retries,
        backoff_base=0.001,
        backoff_max=0.01,
        first_token_timeout=2,
        idle_timeout=2,
    )


# --- endings and in-band errors -------------------------------------------------------------


@pytest.mark.parametrize(
    ("hosted", "case"),
    [(name, case) for name, spec in HOSTED.items() for case in spec.errors],
    indirect=["hosted"],
)
async def test_in_band_error_is_an_error_with_its_message(
    hosted: Hosted, case: str, upstream: ScriptedUpstream, provider: Provider
) -> None:
    frame, message = hosted.errors[case]
    upstream.script(Reply(frames=[*hosted.begun(), frame, hosted.end]))

    with pytest.raises(UpstreamProtocolError, match=f"^{re.escape(message)}$"):
        await collect(provider.stream(PROMPT))


async def test_eof_without_the_end_marker_is_truncated_not_success(
    hosted: Hosted, upstream: ScriptedUpstream, provider: Provider
) -> None:
    upstream.script(Reply(frames=hosted.unfinished(["Hi", " there"])))

    with pytest.raises(
        UpstreamProtocolError, match=rf"without {re.escape(hosted.end_marker)} \(truncated\)"
    ):
        await collect(provider.stream(PROMPT))


async def test_connection_cut_mid_body_is_truncated(
    hosted: Hosted, upstream: ScriptedUpstream, provider: Provider
) -> None:
    upstream.script(Reply(frames=hosted.begun(), cut=True))

    with pytest.raises(UpstreamProtocolError, match="truncated"):
        await collect(provider.stream(PROMPT))


async def test_malformed_json_is_a_protocol_error(
    hosted: Hosted, upstream: ScriptedUpstream, provider: Provider
) -> None:
    upstream.script(Reply(frames=[*hosted.begun(), hosted.malformed, hosted.end]))

    with pytest.raises(UpstreamProtocolError, match="malformed JSON"):
        await collect(provider.stream(PROMPT))


async def test_a_2xx_answer_that_is_not_sse_is_a_protocol_error(
    upstream: ScriptedUpstream, provider: Provider
) -> None:
    upstream.script(Reply(content_type="application/json", body=b"{}"))

    with pytest.raises(UpstreamProtocolError, match="text/event-stream"):
        await collect(provider.stream(PROMPT))


# --- failure statuses -----------------------------------------------------------------------


async def test_401_is_a_status_error_that_is_not_retryable(
    hosted: Hosted, upstream: ScriptedUpstream, provider: Provider
) -> None:
    body, message = hosted.unauthorized
    upstream.script(Reply(status=401, content_type="application/json", body=body))

    with pytest.raises(UpstreamStatusError, match=message) as caught:
        await collect(provider.stream(PROMPT))

    assert caught.value.status == 401
    assert not caught.value.retryable


async def test_401_is_not_retried(
    hosted: Hosted, upstream: ScriptedUpstream, provider: Provider
) -> None:
    body, message = hosted.unauthorized
    upstream.script(Reply(status=401, content_type="application/json", body=body))

    with pytest.raises(UpstreamStatusError, match=message):
        await collect(retrying(provider, max_retries=3))

    assert len(upstream.requests) == 1


async def test_overload_is_retryable_and_retried_before_the_first_token(
    hosted: Hosted, upstream: ScriptedUpstream, provider: Provider
) -> None:
    status, body, pattern = hosted.overloaded
    overloaded = Reply(status=status, content_type="application/json", body=body)
    upstream.script(overloaded)
    with pytest.raises(UpstreamStatusError, match=pattern) as caught:
        await collect(provider.stream(PROMPT))
    assert caught.value.retryable

    upstream.reset()
    upstream.script(overloaded, Reply(frames=hosted.well_formed(["ok"])))
    text, _ = await collect(retrying(provider, max_retries=2))

    assert text == "ok"
    assert len(upstream.requests) == 2


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({"Retry-After": "3"}, 3.0), ({"retry-after-ms": "250", "Retry-After": "1"}, 0.25)],
)
async def test_429_carries_retry_after(
    headers: dict[str, str], expected: float, upstream: ScriptedUpstream, provider: Provider
) -> None:
    upstream.script(Reply(status=429, headers=headers, content_type="application/json", body=b"{}"))

    with pytest.raises(UpstreamStatusError) as caught:
        await collect(provider.stream(PROMPT))

    assert caught.value.retryable
    assert caught.value.retry_after == pytest.approx(expected)


async def test_huge_error_body_is_read_only_in_part(
    upstream: ScriptedUpstream, provider: Provider
) -> None:
    upstream.script(Reply(status=500, content_type="text/plain", body=b"x" * 1_000_000))

    with pytest.raises(UpstreamStatusError) as caught:
        await collect(provider.stream(PROMPT))

    assert caught.value.retryable
    assert len(str(caught.value)) < 2200


# --- connecting -----------------------------------------------------------------------------


async def test_refused_connection_is_unavailable(hosted: Hosted, http: httpx.AsyncClient) -> None:
    settings = hosted.settings(f"http://127.0.0.1:{free_port()}{hosted.root}")
    provider = build_provider(hosted.name, settings, http)

    with pytest.raises(UpstreamUnavailable) as caught:
        await collect(provider.stream(PROMPT))

    assert caught.value.retryable


async def test_connect_timeout_is_a_timeout(hosted: Hosted, http: httpx.AsyncClient) -> None:
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
            settings = hosted.settings(
                f"http://127.0.0.1:{port}{hosted.root}", upstream_connect_timeout=0.2
            )
            provider = build_provider(hosted.name, settings, http)
            with pytest.raises(UpstreamTimeout, match="ConnectTimeout"):
                await collect(provider.stream(PROMPT))
        finally:
            for s in fillers:
                s.close()


# --- hanging up -----------------------------------------------------------------------------


async def test_closing_the_stream_early_closes_the_upstream_connection(
    hosted: Hosted, upstream: ScriptedUpstream, provider: Provider
) -> None:
    upstream.script(Reply(frames=hosted.endless()))

    stream = provider.stream(PROMPT)
    received = [await anext(stream) for _ in range(3)]
    await stream.aclose()

    assert received == ["x", "x", "x"]
    await asyncio.wait_for(upstream.client_gone.wait(), timeout=2)
    assert upstream.frames_sent < 50


# --- settings and keys ----------------------------------------------------------------------


async def test_public_api_without_a_key_is_refused_naming_the_setting(
    hosted: Hosted, http: httpx.AsyncClient
) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]

    with pytest.raises(ValueError, match=hosted.key_setting):
        build_provider(hosted.name, settings, http)
    with pytest.raises(ProviderConfigError, match=hosted.key_setting):
        validate_job(hosted.name, "any-model", settings)


def test_validate_accepts_a_key_or_a_server_of_ones_own(hosted: Hosted) -> None:
    public = Settings(_env_file=None)  # type: ignore[call-arg]
    with_key = hosted.settings(getattr(public, f"{hosted.name}_base_url"), "sk-test")
    own_server = hosted.settings("http://127.0.0.1:1/v1")

    for settings in (with_key, own_server):
        provider_class(hosted.name).validate("any-model", settings)
        validate_job(hosted.name, "any-model", settings)


async def test_from_settings_sends_the_secret_key(
    hosted: Hosted, upstream: ScriptedUpstream, http: httpx.AsyncClient
) -> None:
    settings = hosted.settings(upstream.url + hosted.root + "/", "sk-s3")
    provider = build_provider(hosted.name, settings, http)
    upstream.script(Reply(frames=hosted.well_formed(["ok"])))

    text, _ = await collect(provider.stream(PROMPT))

    assert isinstance(provider, hosted.cls)
    assert text == "ok"
    [request] = upstream.requests
    assert request.path == hosted.path
    assert request.headers[hosted.key_header] == hosted.key_format.format("sk-s3")


async def test_local_server_needs_no_key_and_gets_no_key_header(
    hosted: Hosted, upstream: ScriptedUpstream, http: httpx.AsyncClient
) -> None:
    settings = hosted.settings(upstream.url + hosted.root + "/")
    provider = build_provider(hosted.name, settings, http)
    upstream.script(Reply(frames=hosted.well_formed(["ok"])))

    text, _ = await collect(provider.stream(PROMPT))

    assert isinstance(provider, hosted.cls)
    assert text == "ok"
    [request] = upstream.requests
    assert request.path == hosted.path
    assert hosted.key_header not in request.headers


# --- continuing a stored text ---------------------------------------------------------------


def continued(stored: str) -> Prompt:
    return dataclasses.replace(PROMPT, continuation=stored)


@pytest.mark.parametrize(
    ("stored", "deltas", "new_text"),
    [
        ("Ada shipped.", [" She", " mentors."], " She mentors."),
        ("Ada shipped. ", [" She", " mentors."], "She mentors."),  # not "shipped.  She"
        ("Ada shipped. ", ["She", " mentors."], "She mentors."),  # not "shipped.She" either
        ("Ada shipped.\n\n", ["\n", "\nShe", " mentors."], "She mentors."),
        ("Ada shipped.\n\n", [" She"], " She"),  # not the stored whitespace: kept
        ("Ada shipped.\n", ["\n\n", "She"], "\nShe"),  # what the stored text lacks: kept
    ],
)
async def test_a_continuation_is_prefilled_without_trailing_whitespace_and_joins_cleanly(
    hosted: Hosted,
    stored: str,
    deltas: list[str],
    new_text: str,
    upstream: ScriptedUpstream,
    provider: Provider,
) -> None:
    upstream.script(Reply(frames=hosted.well_formed(deltas)))

    text, usage = await collect(provider.stream(continued(stored)))

    assert text == new_text
    assert usage is not None
    [request] = upstream.requests
    *_, user, final = request.json["messages"]
    assert user == {"role": "user", "content": "Review Ada."}
    assert final == hosted.prefill(stored.rstrip())


async def test_a_continuation_of_only_whitespace_prefills_nothing(
    upstream: ScriptedUpstream, hosted: Hosted, provider: Provider
) -> None:
    upstream.script(Reply(frames=hosted.well_formed(["\n", "Ada", " shipped."])))

    text, _ = await collect(provider.stream(continued("\n\n")))

    assert text == "Ada shipped."
    [request] = upstream.requests
    assert request.json["messages"][-1] == {"role": "user", "content": "Review Ada."}


async def test_a_refused_prefill_is_continued_by_instruction_from_then_on(
    hosted: Hosted, upstream: ScriptedUpstream, provider: Provider
) -> None:
    stored = "Ada led the payments migra"
    upstream.script(
        Reply(status=400, content_type="application/json", body=hosted.prefill_refused),
        Reply(frames=hosted.well_formed(["migration", " went", " well."])),
    )

    text, _ = await collect(provider.stream(continued(stored)))

    assert text == "tion went well."  # the restated "migra" dropped
    refused, instructed = upstream.requests
    assert refused.json["messages"][-1] == hosted.prefill(stored)
    instruction = {"role": "user", "content": prompts.continue_instruction(stored)}
    assert instructed.json["messages"][-2:] == [
        {"role": "user", "content": "Review Ada."},
        instruction,
    ]
    assert not any(
        key in instructed.json for key in ("continue_final_message", "add_generation_prompt")
    )

    upstream.reset()  # the next continuation of this model goes straight to instruction
    upstream.script(Reply(frames=hosted.well_formed([" And", " more."])))
    text, _ = await collect(provider.stream(continued(stored + "tion went well.")))

    assert text == " And more."
    [request] = upstream.requests
    assert request.json["messages"][-1]["content"].startswith("Your answer")


async def test_a_refusal_after_the_fallback_is_the_error(
    hosted: Hosted, upstream: ScriptedUpstream, provider: Provider
) -> None:
    body, message = hosted.unauthorized
    upstream.script(
        Reply(status=400, content_type="application/json", body=hosted.prefill_refused),
        Reply(status=401, content_type="application/json", body=body),
    )

    with pytest.raises(UpstreamStatusError, match=message):
        await collect(provider.stream(continued("Ada shipped.")))

    assert len(upstream.requests) == 2


async def test_a_continuation_is_retried_before_its_first_token_with_the_same_request(
    hosted: Hosted, upstream: ScriptedUpstream, provider: Provider
) -> None:
    status, body, _ = hosted.overloaded
    upstream.script(
        Reply(status=status, content_type="application/json", body=body),
        Reply(frames=hosted.well_formed([" She", " mentors."])),
    )

    text = ""
    stream = resilient_stream(
        provider,
        continued("Ada shipped. "),
        max_retries=2,
        backoff_base=0.001,
        backoff_max=0.01,
        first_token_timeout=2,
        idle_timeout=2,
    )
    async with contextlib.aclosing(stream) as items:
        async for item in items:
            text += item if isinstance(item, str) else ""

    assert text == "She mentors."
    first, second = upstream.requests
    assert first.json == second.json
    assert first.json["messages"][-1] == hosted.prefill("Ada shipped.")


async def test_closing_a_continuation_early_closes_the_upstream_connection(
    hosted: Hosted, upstream: ScriptedUpstream, provider: Provider
) -> None:
    upstream.script(Reply(frames=hosted.endless()))

    stream = provider.stream(continued("Ada shipped. "))
    received = [await anext(stream) for _ in range(3)]
    await stream.aclose()

    assert received == ["x", "x", "x"]
    await asyncio.wait_for(upstream.client_gone.wait(), timeout=2)
    assert upstream.frames_sent < 50
