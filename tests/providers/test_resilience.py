"""resilient_stream: retries before the first token only, timeouts, and closing the upstream.

Retry logic is driven by small scripted providers (plain classes that satisfy the Provider
protocol); timeouts and cancellation run against a real loopback server, because what matters
there is that a real connection gets closed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from reviewstream.errors import (
    ProviderError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from reviewstream.models import ReviewRequest, Usage
from reviewstream.providers import Prompt
from reviewstream.providers.openai import OpenAIProvider
from reviewstream.providers.resilience import backoff_delay, parse_retry_after, resilient_stream

from tests.support.upstreams import Reply, ScriptedUpstream, collect, openai_chunk, openai_frames

PROMPT = Prompt(
    system="s",
    user="u",
    model="m",
    max_tokens=10,
    request=ReviewRequest(employee_name="Ada", employee_review_points="Shipped."),
)
FAST = {"backoff_base": 0.001, "backoff_max": 0.01, "first_token_timeout": 2, "idle_timeout": 2}


class Scripted:
    """A provider whose attempts follow a script: each is a list of items or errors to raise."""

    name = "scripted"

    def __init__(self, *attempts: list[str | Usage | ProviderError]) -> None:
        self.attempts = list(attempts)
        self.started = 0
        self.closed = 0

    async def stream(self, prompt: Prompt) -> AsyncGenerator[str | Usage, None]:
        script = self.attempts[min(self.started, len(self.attempts) - 1)]
        self.started += 1
        try:
            for item in script:
                if isinstance(item, ProviderError):
                    raise item
                yield item
                await asyncio.sleep(0)
        finally:
            self.closed += 1


def stream(provider: Scripted | OpenAIProvider, **overrides: float) -> AsyncIterator[str | Usage]:
    options = {**FAST, **overrides}
    retries = int(options.pop("max_retries", 3))
    return resilient_stream(provider, PROMPT, max_retries=retries, **options)


async def test_retries_retryable_errors_before_the_first_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = Scripted(
        [UpstreamUnavailable("refused")],
        [UpstreamStatusError(503, "busy")],
        ["Hi", " there", Usage(output_tokens=2)],
    )

    with caplog.at_level(logging.WARNING, logger="reviewstream.providers.resilience"):
        text, usage = await collect(stream(provider))

    assert (text, usage) == ("Hi there", Usage(output_tokens=2))
    assert provider.started == provider.closed == 3
    assert [r.getMessage() for r in caplog.records][1].startswith(
        "scripted failed before the first token (upstream answered HTTP 503: busy); retry 2/3"
    )


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_never_retries_client_errors(status: int) -> None:
    provider = Scripted([UpstreamStatusError(status, "no")], ["never"])

    with pytest.raises(UpstreamStatusError):
        await collect(stream(provider))

    assert provider.started == 1


async def test_never_retries_a_non_retryable_protocol_error() -> None:
    provider = Scripted([UpstreamProtocolError("truncated")], ["never"])

    with pytest.raises(UpstreamProtocolError):
        await collect(stream(provider))

    assert provider.started == 1


async def test_never_retries_after_the_first_delta() -> None:
    provider = Scripted(["Hi", UpstreamUnavailable("gone")], ["Hi again"])

    received: list[str | Usage] = []
    with pytest.raises(UpstreamUnavailable):
        async for item in stream(provider):
            received.append(item)

    assert received == ["Hi"]
    assert provider.started == provider.closed == 1


async def test_gives_up_after_max_retries_with_the_last_error() -> None:
    provider = Scripted([UpstreamStatusError(502, "bad gateway")])

    with pytest.raises(UpstreamStatusError, match="502"):
        await collect(stream(provider, max_retries=2))

    assert provider.started == 3


async def test_honours_retry_after_when_longer_than_the_backoff() -> None:
    provider = Scripted([UpstreamStatusError(429, "slow down", retry_after=0.3)], ["ok"])

    started = time.monotonic()
    text, _ = await collect(stream(provider, backoff_max=5))

    assert text == "ok"
    assert time.monotonic() - started >= 0.3


async def test_caps_retry_after_at_backoff_max() -> None:
    provider = Scripted([UpstreamStatusError(429, "slow down", retry_after=60)], ["ok"])

    started = time.monotonic()
    text, _ = await collect(stream(provider, backoff_max=0.05))

    assert text == "ok"
    assert time.monotonic() - started < 2


def test_backoff_is_full_jitter_within_an_exponential_cap() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(3, base=0.5, cap=20, rng=rng) for _ in range(200)]

    assert all(0 <= d <= 4 for d in delays)
    assert max(delays) > 3 and min(delays) < 1  # spread over the whole range, not fixed
    assert backoff_delay(50, base=0.5, cap=20, rng=rng) <= 20
    assert backoff_delay(0, base=0.5, cap=20, retry_after=7, rng=rng) == 7
    assert backoff_delay(0, base=0.5, cap=20, retry_after=90, rng=rng) == 20


def test_parses_retry_after_forms() -> None:
    future = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)

    assert parse_retry_after(httpx.Headers({"Retry-After": "12"})) == 12
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "1500"})) == 1.5
    assert 25 < (parse_retry_after(httpx.Headers({"Retry-After": future})) or 0) <= 30
    assert parse_retry_after(httpx.Headers({"Retry-After": "soon"})) is None
    assert parse_retry_after(httpx.Headers({})) is None


async def test_closing_early_closes_the_inner_stream() -> None:
    provider = Scripted(["a", "b", "c", "d"])

    outer = stream(provider)
    assert await anext(outer) == "a"
    await outer.aclose()  # type: ignore[attr-defined]

    assert provider.closed == 1


# --- against a real upstream ----------------------------------------------------------------


@pytest.fixture
async def openai(upstream: ScriptedUpstream) -> AsyncIterator[OpenAIProvider]:
    async with httpx.AsyncClient() as http:
        yield OpenAIProvider(http, base_url=upstream.url, api_key=None, connect_timeout=2)


async def test_first_token_timeout_fails_an_attempt_and_hangs_up(
    upstream: ScriptedUpstream, openai: OpenAIProvider
) -> None:
    upstream.script(Reply(frames=[5.0, *openai_frames(["late"])]))

    with pytest.raises(UpstreamTimeout, match=r"no first token within 0\.2s"):
        await collect(stream(openai, first_token_timeout=0.2, max_retries=0))

    await asyncio.wait_for(upstream.client_gone.wait(), timeout=2)


async def test_slow_first_token_is_retried(
    upstream: ScriptedUpstream, openai: OpenAIProvider
) -> None:
    upstream.script(Reply(frames=[5.0]), Reply(frames=openai_frames(["on time"])))

    text, _ = await collect(stream(openai, first_token_timeout=0.2))

    assert text == "on time"
    assert len(upstream.requests) == 2


async def test_silence_mid_stream_times_out_and_hangs_up(
    upstream: ScriptedUpstream, openai: OpenAIProvider
) -> None:
    frames = openai_frames(["Hi", " there"])
    upstream.script(Reply(frames=[*frames[:2], 5.0, *frames[2:]]), Reply(frames=frames))

    received: list[str | Usage] = []
    with pytest.raises(UpstreamTimeout, match=r"upstream silent for 0\.2s"):
        async for item in stream(openai, idle_timeout=0.2):
            received.append(item)

    assert received == ["Hi"]
    assert len(upstream.requests) == 1  # text was out: no retry
    await asyncio.wait_for(upstream.client_gone.wait(), timeout=2)


async def test_cancelling_the_consumer_closes_the_upstream_connection(
    upstream: ScriptedUpstream, openai: OpenAIProvider
) -> None:
    frames: list[bytes | float] = [openai_chunk("Hi", role="assistant")]
    frames += [item for _ in range(500) for item in (openai_chunk(" more"), 0.01)]
    upstream.script(Reply(frames=frames))
    received: list[str | Usage] = []
    five = asyncio.Event()

    async def consume() -> None:
        async for item in stream(openai):
            received.append(item)
            if len(received) == 5:
                five.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(five.wait(), timeout=2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await asyncio.wait_for(upstream.client_gone.wait(), timeout=2)
    assert upstream.frames_sent < 100


async def test_the_idle_timeout_applies_from_the_first_token_when_shorter(
    upstream: ScriptedUpstream, openai: OpenAIProvider
) -> None:
    frames = openai_frames(["Hi", " there"])
    upstream.script(Reply(frames=[*frames[:2], 30.0, *frames[2:]]))

    with pytest.raises(UpstreamTimeout, match=r"upstream silent for 0\.2s"):
        # The first token's 30 s limit must not outlive it: the silence after it is 0.2 s.
        async with asyncio.timeout(5):
            await collect(stream(openai, first_token_timeout=30, idle_timeout=0.2))


async def test_time_spent_by_the_consumer_is_not_upstream_silence() -> None:
    provider = Scripted(["a", "b", "c"])
    received: list[str | Usage] = []

    async for item in stream(provider, first_token_timeout=0.1, idle_timeout=0.1):
        received.append(item)
        await asyncio.sleep(0.25)  # the consumer is slow; the upstream never is

    assert received == ["a", "b", "c"]
