"""The simulated provider's text and pace, and the provider registry."""

from __future__ import annotations

import random
import subprocess
import sys
import time

import httpx
import pytest

from reviewstream.errors import ProviderConfigError
from reviewstream.models import ReviewRequest, Usage
from reviewstream.providers import (
    build_prompt,
    build_provider,
    default_model,
    provider_class,
    validate_job,
)
from reviewstream.providers.anthropic import AnthropicProvider
from reviewstream.providers.openai import OpenAIProvider
from reviewstream.providers.simulated import SimulatedProvider, tokenize, write_review
from reviewstream.settings import Settings

from tests.support.upstreams import collect

POINTS = (
    "Led the payments migration; mentors two juniors.\n"
    "- Improved p99 latency by 1.5x\n"
    "Needs to delegate more. Writes thorough design docs"
)
REQUEST = ReviewRequest(employee_name="Ada Lovelace", employee_review_points=POINTS)


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None, sim_tokens_per_second=5000, sim_first_token_ms=0)  # type: ignore[call-arg]


async def stream_text(request: ReviewRequest) -> tuple[list[str], Usage]:
    prompt = build_prompt(request, "sim-default", Settings(_env_file=None))  # type: ignore[call-arg]
    provider = SimulatedProvider(tokens_per_second=100_000, first_token_ms=0)
    items = [item async for item in provider.stream(prompt)]
    *tokens, usage = items
    assert all(isinstance(t, str) for t in tokens)
    assert isinstance(usage, Usage)
    return tokens, usage  # type: ignore[return-value]


async def test_review_names_the_employee_and_weaves_in_every_point() -> None:
    tokens, _ = await stream_text(REQUEST)
    text = "".join(tokens)

    assert "Ada Lovelace" in text
    for point in [
        "led the payments migration",
        "mentors two juniors",
        "improved p99 latency by 1.5x",
        "needs to delegate more",
        "writes thorough design docs",
    ]:
        assert point in text.lower()


@pytest.mark.parametrize("tone", ["balanced", "encouraging", "direct", "formal"])
@pytest.mark.parametrize("length", [50, 120, 350, 800, 1500])
def test_length_is_within_15_percent_of_the_request(tone: str, length: int) -> None:
    request = REQUEST.model_copy(update={"tone": tone, "length_words": length})

    words = len(write_review(request, random.Random(1)).split())

    assert 0.85 * length <= words <= 1.15 * length


def test_tone_changes_the_phrasing() -> None:
    texts = {
        tone: write_review(REQUEST.model_copy(update={"tone": tone}), random.Random(1))
        for tone in ["balanced", "encouraging", "direct", "formal"]
    }

    assert len(set(texts.values())) == 4
    assert (
        "Gap:" in texts["direct"]
        or "Needs attention:" in texts["direct"]
        or ("Expectation for next cycle:" in texts["direct"])
    )


async def test_text_is_deterministic_per_request_and_varies_between_requests() -> None:
    first, _ = await stream_text(REQUEST)
    again, _ = await stream_text(REQUEST)
    other, _ = await stream_text(REQUEST.model_copy(update={"employee_name": "Grace Hopper"}))

    assert first == again
    assert "".join(other) != "".join(first).replace("Ada Lovelace", "Grace Hopper")


async def test_tokens_look_like_an_llms() -> None:
    tokens, usage = await stream_text(REQUEST)

    assert not tokens[0].startswith(" ")
    assert "\n\n" in tokens  # paragraph breaks are tokens of their own
    assert any(t in {".", ","} for t in tokens)  # punctuation is sometimes its own token
    assert sum(t.startswith(" ") for t in tokens) > len(tokens) / 2
    words = len("".join(tokens).split())
    assert words < len(tokens) < 2 * words
    assert usage.output_tokens == len(tokens)


def test_tokenize_round_trips_text() -> None:
    text = "Hello, world.\n\nA  second   paragraph: with extraordinarily long words!"

    assert "".join(tokenize(text, random.Random(3))) == text


async def test_usage_counts_prompt_words() -> None:
    prompt = build_prompt(REQUEST, "sim-default", Settings(_env_file=None))  # type: ignore[call-arg]

    _, usage = await stream_text(REQUEST)

    assert usage.input_tokens == len(prompt.system.split()) + len(prompt.user.split())


async def test_streams_at_the_configured_rate() -> None:
    provider = SimulatedProvider(tokens_per_second=200, first_token_ms=0)
    prompt = build_prompt(REQUEST, "sim-default", Settings(_env_file=None))  # type: ignore[call-arg]

    started = time.monotonic()
    stream = provider.stream(prompt)
    for _ in range(51):
        await anext(stream)
    elapsed = time.monotonic() - started
    await stream.aclose()

    assert 0.2 <= elapsed < 2  # token 50 is due at 0.25 s


async def test_waits_before_the_first_token() -> None:
    provider = SimulatedProvider(tokens_per_second=1000, first_token_ms=150)
    prompt = build_prompt(REQUEST, "sim-default", Settings(_env_file=None))  # type: ignore[call-arg]

    started = time.monotonic()
    stream = provider.stream(prompt)
    await anext(stream)
    elapsed = time.monotonic() - started
    await stream.aclose()

    assert 0.14 <= elapsed < 2


def test_gpt_4_preset_writes_the_seed_articles_review_in_45_to_50_seconds() -> None:
    pace = SimulatedProvider(20, 400).pace_for("sim-gpt-4")
    rng = random.Random(0)
    tokens = tokenize(write_review(REQUEST, rng), rng)  # 350 words by default

    seconds = pace.first_token_ms / 1000 + (len(tokens) - 1) / pace.tokens_per_second

    assert 45 <= seconds <= 50


def test_presets_and_unknown_models() -> None:
    provider = SimulatedProvider(tokens_per_second=33, first_token_ms=44)

    assert set(SimulatedProvider.PRESETS) == {"sim-default", "sim-gpt-4", "sim-fast"}
    assert provider.pace_for("sim-default").tokens_per_second == 33
    assert provider.pace_for("sim-fast").tokens_per_second == 1000
    with pytest.raises(ValueError, match="sim-default, sim-gpt-4, sim-fast"):
        SimulatedProvider.validate("gpt-4o", Settings(_env_file=None))  # type: ignore[call-arg]


async def test_stream_refuses_an_unknown_model() -> None:
    prompt = build_prompt(REQUEST, "gpt-4o", Settings(_env_file=None))  # type: ignore[call-arg]

    with pytest.raises(ValueError, match="unknown simulated model 'gpt-4o'"):
        await collect(SimulatedProvider(100, 0).stream(prompt))


# --- the registry ---------------------------------------------------------------------------


async def test_build_provider_simulated_uses_settings(
    settings: Settings, http: httpx.AsyncClient
) -> None:
    provider = build_provider("simulated", settings, http)

    assert isinstance(provider, SimulatedProvider)
    assert provider.pace.tokens_per_second == 5000
    assert provider.name == "simulated"


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("simulated", SimulatedProvider),
        ("openai", OpenAIProvider),
        ("anthropic", AnthropicProvider),
    ],
)
def test_provider_class_is_chosen_by_name(name: str, cls: object) -> None:
    chosen = provider_class(name)

    assert chosen is cls
    assert chosen.name == name


def test_choosing_a_provider_imports_only_its_module() -> None:
    script = (
        "import sys\n"
        "from reviewstream.providers import provider_class\n"
        "def loaded():\n"
        "    return {m.rpartition('.')[2] for m in sys.modules if m.startswith('reviewstream.')}\n"
        "provider_class('simulated')\n"
        "print(sorted({'simulated', 'sse_http', 'openai', 'anthropic'} & loaded()))\n"
        "provider_class('openai')\n"
        "print(sorted({'sse_http', 'openai', 'anthropic'} & loaded()))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)

    assert run.stdout.splitlines() == ["['simulated']", "['openai', 'sse_http']"]


async def test_an_unknown_provider_name_is_refused(
    settings: Settings, http: httpx.AsyncClient
) -> None:
    message = "unknown provider 'bogus'; choose simulated, openai or anthropic"

    with pytest.raises(ValueError, match=message):
        provider_class("bogus")
    with pytest.raises(ValueError, match=message):
        build_provider("bogus", settings, http)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        validate_job("bogus", "sim-default", settings)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        default_model("bogus", settings)  # type: ignore[arg-type]


def test_validate_job_accepts_presets_and_refuses_other_simulated_models(
    settings: Settings,
) -> None:
    for preset in SimulatedProvider.PRESETS:
        validate_job("simulated", preset, settings)

    with pytest.raises(ProviderConfigError, match="unknown simulated model 'gpt-4o'"):
        validate_job("simulated", "gpt-4o", settings)


def test_default_models() -> None:
    settings = Settings(_env_file=None, openai_model="o", anthropic_model="a")  # type: ignore[call-arg]

    assert default_model("simulated", settings) == "sim-default"
    assert default_model("openai", settings) == "o"
    assert default_model("anthropic", settings) == "a"


def test_build_prompt_scales_max_tokens_with_the_requested_length() -> None:
    settings = Settings(_env_file=None, max_output_tokens=800)  # type: ignore[call-arg]

    short = build_prompt(REQUEST.model_copy(update={"length_words": 100}), "m", settings)
    long = build_prompt(REQUEST.model_copy(update={"length_words": 1500}), "m", settings)

    assert short.max_tokens == 800
    assert long.max_tokens >= 2 * 1500
    assert short.model == "m" and short.request.employee_name == "Ada Lovelace"
    assert "Ada Lovelace" in short.user and "payments migration" in short.user
    assert "performance reviews" in short.system


# --- continuing a stored text ---------------------------------------------------------------


async def continue_after(stored: str, request: ReviewRequest = REQUEST) -> tuple[list[str], Usage]:
    """The simulated provider's stream for ``request`` given ``stored`` as the continuation."""
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    prompt = build_prompt(request, "sim-default", settings, continuation=stored)
    provider = SimulatedProvider(tokens_per_second=1_000_000, first_token_ms=0)
    *tokens, usage = [item async for item in provider.stream(prompt)]
    assert all(isinstance(t, str) for t in tokens)
    assert isinstance(usage, Usage)
    return tokens, usage  # type: ignore[return-value]


async def test_continuing_at_every_offset_completes_the_same_review_byte_for_byte() -> None:
    request = REQUEST.model_copy(update={"length_words": 40})
    review, _ = await stream_text(request)
    text = "".join(review)
    boundaries = {sum(len(t) for t in review[:i]): i for i in range(len(review) + 1)}
    mid_token = [c for c in range(len(text)) if c not in boundaries]
    assert mid_token, "the review has tokens longer than one character"

    for cut in range(len(text) + 1):  # 0, every boundary, every offset inside a token, the end
        tokens, usage = await continue_after(text[:cut], request)

        assert text[:cut] + "".join(tokens) == text, cut
        assert usage.output_tokens == len(tokens)
        if cut in boundaries:  # the very tokens the uninterrupted run yields after that point
            assert tokens == review[boundaries[cut] :], cut
        else:  # the rest of the token it stopped in, then the uninterrupted run's tokens
            i = max(i for c, i in boundaries.items() if c < cut)
            assert tokens[1:] == review[i + 1 :], cut


async def test_continuing_a_long_review_mid_word_and_mid_paragraph() -> None:
    review, _ = await stream_text(REQUEST)
    text = "".join(review)
    split_word = next(i for i, t in enumerate(review) if t[:1].isalpha() and i > 20)
    cut = sum(len(t) for t in review[:split_word]) + 1  # inside a word, after its first letter
    paragraph = text.index("\n\n") + 1  # between the two newlines of a paragraph break

    for stored in (text[:cut], text[:paragraph], text[: len(text) // 2], text):
        tokens, _ = await continue_after(stored)

        assert stored + "".join(tokens) == text


async def test_a_whole_review_stored_continues_with_nothing_but_usage() -> None:
    review, _ = await stream_text(REQUEST)

    tokens, usage = await continue_after("".join(review))

    assert tokens == []
    assert usage.output_tokens == 0


@pytest.mark.parametrize(
    ("stored", "gap"),
    [
        ("Notes from another model.", ["\n\n"]),
        ("Notes from another model.\n", ["\n"]),
        ("Notes from another model.\n\n", []),
        ("This review covers Grace", ["\n\n"]),  # a common start is no reason to splice
    ],
)
async def test_text_that_is_not_this_review_is_followed_by_a_fresh_review(
    stored: str, gap: list[str]
) -> None:
    review, _ = await stream_text(REQUEST)

    tokens, usage = await continue_after(stored)

    assert tokens == [*gap, *review]
    assert usage.output_tokens == len(gap) + len(review)


async def test_a_continuation_counts_the_stored_words_as_input() -> None:
    prompt = build_prompt(REQUEST, "sim-default", Settings(_env_file=None))  # type: ignore[call-arg]
    review, _ = await stream_text(REQUEST)
    stored = "".join(review[:30])

    _, usage = await continue_after(stored)

    prompt_words = len(prompt.system.split()) + len(prompt.user.split())
    assert usage.input_tokens == prompt_words + len(stored.split())


async def test_a_continuation_keeps_the_time_to_first_token() -> None:
    review, _ = await stream_text(REQUEST)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    prompt = build_prompt(REQUEST, "sim-default", settings, "".join(review[:40]))
    provider = SimulatedProvider(tokens_per_second=1000, first_token_ms=150)

    started = time.monotonic()
    stream = provider.stream(prompt)
    first = await anext(stream)
    elapsed = time.monotonic() - started
    await stream.aclose()

    assert first == review[40]
    assert 0.14 <= elapsed < 2


def test_build_prompt_carries_the_continuation() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]

    assert build_prompt(REQUEST, "m", settings).continuation == ""
    assert build_prompt(REQUEST, "m", settings, continuation="So far.").continuation == "So far."
