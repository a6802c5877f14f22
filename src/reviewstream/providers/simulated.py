"""An offline model: writes a plausible review from the request at a configurable pace.

It exists so the whole system (queue, store, fan-out, every delivery mode, the benchmark) can
run without a network or a bill, with realistic timing: a delay before the first token, then a
steady rate, tokens shaped like an LLM's (a word with its leading space, punctuation and word
pieces sometimes on their own, paragraph breaks as ``"\\n\\n"``). The text is deterministic for
a given request, so tests and benchmark runs are repeatable — and so a continued attempt can
pick up exactly where an interrupted one stopped (see :meth:`SimulatedProvider.stream`).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import re
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..errors import ProviderConfigError
from ..models import ReviewRequest, Usage
from .base import Prompt

if TYPE_CHECKING:
    import httpx

    from ..settings import Settings

__all__ = ["Pace", "SimulatedProvider", "tokenize", "write_review"]


@dataclass(frozen=True, slots=True)
class Pace:
    """How fast the simulated model writes."""

    tokens_per_second: float
    first_token_ms: float


class SimulatedProvider:
    """A provider that needs no network; ``prompt.model`` picks a pace preset.

    ``sim-default`` uses the constructor's pace (from settings); ``sim-gpt-4`` is the seed
    article's scenario, a default-length review at the pace the article describes; ``sim-fast``
    is for tests and load runs.
    """

    name = "simulated"

    #: Preset name -> pace; ``None`` means the pace this provider was built with.
    PRESETS: ClassVar[dict[str, Pace | None]] = {
        "sim-default": None,
        "sim-gpt-4": Pace(tokens_per_second=9.5, first_token_ms=700.0),
        "sim-fast": Pace(tokens_per_second=1000.0, first_token_ms=5.0),
    }

    def __init__(self, tokens_per_second: float, first_token_ms: float) -> None:
        if tokens_per_second <= 0 or first_token_ms < 0:
            raise ValueError("tokens_per_second must be > 0 and first_token_ms >= 0")
        self.pace = Pace(tokens_per_second, first_token_ms)

    @classmethod
    def default_model(cls, settings: Settings) -> str:
        """``sim-default``, the pace the settings give."""
        return "sim-default"

    @classmethod
    def validate(cls, model: str, settings: Settings) -> None:
        """Raise ``ProviderConfigError`` (a ``ValueError``) unless ``model`` names a preset."""
        cls._preset(model)

    @classmethod
    def from_settings(
        cls, settings: Settings, http: httpx.AsyncClient | None = None
    ) -> SimulatedProvider:
        """A provider with the ``REVIEWSTREAM_SIM_*`` pace; it needs no ``http`` client."""
        return cls(settings.sim_tokens_per_second, settings.sim_first_token_ms)

    def pace_for(self, model: str) -> Pace:
        """The pace of preset ``model``."""
        return self._preset(model) or self.pace

    @classmethod
    def _preset(cls, model: str) -> Pace | None:
        try:
            return cls.PRESETS[model]
        except KeyError:
            allowed = ", ".join(cls.PRESETS)
            raise ProviderConfigError(
                f"unknown simulated model {model!r}; choose one of: {allowed}"
            ) from None

    async def stream(self, prompt: Prompt) -> AsyncGenerator[str | Usage, None]:
        """Yield the review's tokens on schedule, then ``Usage``.

        With ``prompt.continuation`` (the text already stored), it yields what the uninterrupted
        run would have yielded after that text, so stored text + new text is the same review
        byte for byte, on the same token boundaries. A continuation that stops inside a token
        (stored by some other tokenizer) gets that token's remainder first.

        A continuation that is *not* a beginning of this request's review (it was written by
        another provider, or by a version of this one that wrote differently) is not spliced
        into it: guessing where the two texts meet would silently garble the result. The
        review is written afresh after it instead, from a new paragraph, as a model that did
        not recognise the text would answer — the stored text stays as it is, and the join is
        plain to see.

        Pacing is the preset's, counted from this request: a continuation waits the
        time-to-first-token before its first token, like any new request. ``Usage`` counts the
        continuation's words as input (a model would read it) and only the new tokens as output.
        """
        pace = self.pace_for(prompt.model)
        rng = _rng_for(prompt.request)
        tokens = _after(tokenize(write_review(prompt.request, rng), rng), prompt.continuation)
        loop = asyncio.get_running_loop()
        # Each token is due at a fixed time from the start, so the rate holds however late
        # the event loop wakes us (no drift from summing sleeps).
        start = loop.time() + pace.first_token_ms / 1000
        for i, token in enumerate(tokens):
            await asyncio.sleep(max(0.0, start + i / pace.tokens_per_second - loop.time()))
            yield token
        read = (prompt.system, prompt.user, prompt.continuation)
        yield Usage(input_tokens=sum(len(text.split()) for text in read), output_tokens=len(tokens))


def _after(review: list[str], stored: str) -> list[str]:
    """The tokens of ``review`` that follow ``stored`` (see ``SimulatedProvider.stream``)."""
    if not stored:
        return review
    if not "".join(review).startswith(stored):
        newlines = len(stored) - len(stored.rstrip("\n"))
        gap = "\n" * max(0, 2 - newlines)  # up to a paragraph break
        return [gap, *review] if gap else review
    end = 0  # characters of the review before token i
    for i, token in enumerate(review):
        if end + len(token) > len(stored):
            return [token[len(stored) - end :], *review[i + 1 :]]
        end += len(token)
    return []  # the whole review is stored already


def _rng_for(request: ReviewRequest) -> random.Random:
    text = "\x1f".join(
        [
            request.employee_name,
            request.employee_review_points,
            request.tone,
            str(request.length_words),
        ]
    )
    return random.Random(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))


# --- the text ------------------------------------------------------------------------------

_GROWTH = re.compile(
    r"\b(needs?|should|could|must|improve|improving|work on|struggl\w*|late|missed|lacks?|"
    r"too|better|inconsistent\w*|delegat\w*|hesitant|avoids?|slow|more|less)\b",
    re.IGNORECASE,
)
_SPLIT_POINTS = re.compile(r"[;\n]+|\.(?=\s|$)")
_BULLET = re.compile(r"^(?:[-*•]+|\d+[.)])\s*")

# Per tone: opening, strength frames, growth frames, closing. ``{name}`` is the full name,
# ``{first}`` the first name, ``{point}`` the review point as written.
_TONES: dict[str, dict[str, list[str]]] = {
    "balanced": {
        "open": [
            "This review covers {name}'s work over the past cycle.",
            "{name} has had a productive review period with clear highlights and a few areas "
            "to grow.",
        ],
        "strength": [
            "A clear strength this cycle: {point}.",
            "One thing stood out in {first}'s work: {point}.",
            "The team specifically credited {first} for this: {point}.",
        ],
        "growth": [
            "One area to focus on next: {point}.",
            "There is room to grow here: {point}.",
            "A fair observation for the coming cycle: {point}.",
        ],
        "close": [
            "Overall, {name} is a valued member of the team, and the next cycle should build "
            "on these results.",
            "In sum, {name} delivered solid work, and with focus on the areas above the next "
            "review should be stronger still.",
        ],
    },
    "encouraging": {
        "open": [
            "It has been a real pleasure to watch {name} grow this cycle.",
            "{name} has had an excellent review period, and the team has noticed.",
        ],
        "strength": [
            "Something to be genuinely proud of: {point}.",
            "{first} really shone here: {point}.",
            "A highlight worth celebrating: {point}.",
        ],
        "growth": [
            "A great next step would build on this: {point}.",
            "An exciting opportunity for the next cycle: {point}.",
            "With a little support, this will come quickly: {point}.",
        ],
        "close": [
            "Thank you, {name}, for everything you brought to the team; the future looks bright.",
            "{name} should feel proud of this cycle, and I look forward to what comes next.",
        ],
    },
    "direct": {
        "open": [
            "Summary of {name}'s performance this cycle.",
            "{name}: strong results, with specific gaps to close.",
        ],
        "strength": [
            "Strength: {point}.",
            "What worked: {point}.",
            "Delivered: {point}.",
        ],
        "growth": [
            "Gap: {point}.",
            "Needs attention: {point}.",
            "Expectation for next cycle: {point}.",
        ],
        "close": [
            "Bottom line: {name} performs well and should close the gaps above next cycle.",
            "Net: {name} meets the bar, and closing these gaps is the path to the next level.",
        ],
    },
    "formal": {
        "open": [
            "This document records the performance evaluation of {name} for the current "
            "review period.",
            "The following assessment of {name} is based on observed performance and peer "
            "feedback.",
        ],
        "strength": [
            "The employee demonstrated notable performance in the following respect: {point}.",
            "Of particular note during the review period: {point}.",
            "Peer feedback consistently recognised the following contribution: {point}.",
        ],
        "growth": [
            "The following has been identified as a development objective: {point}.",
            "It is recommended that the employee focus on the following: {point}.",
            "An area requiring further development: {point}.",
        ],
        "close": [
            "In conclusion, {name}'s performance during this period is assessed as "
            "satisfactory, with the development objectives above to be reviewed next period.",
            "This evaluation of {name} will be revisited at the next scheduled review.",
        ],
    },
}

# A point is followed by a remark on it when the length allows; fillers (built from parts so
# long reviews stay varied without a huge table) make up the rest.
_REMARKS = {
    "strength": [
        "The impact was visible well beyond {first}'s own team.",
        "It set a standard that others now follow.",
        "That work made the rest of the cycle easier for everyone around {first}.",
        "Several peers mentioned it unprompted.",
        "It is exactly the kind of contribution the team needs more of.",
        "This is worth building on deliberately next cycle.",
    ],
    "growth": [
        "Progress here is the clearest path to the next level.",
        "A concrete plan for this is worth agreeing in the next one-to-one.",
        "Small, regular steps will matter more than one big change.",
        "Support is available, and asking for it early is part of the skill.",
        "This will be a focus of the mid-cycle check-in.",
    ],
}
_LEADS = [
    "",
    "Beyond that, ",
    "Day to day, ",
    "Peers also noted that ",
    "Over the cycle, ",
    "Just as importantly, ",
    "In practice, ",
    "On top of this, ",
]
_ACTIONS = [
    "{first} kept stakeholders informed",
    "{first} reviewed code with care",
    "{first} raised risks early",
    "{first} documented decisions clearly",
    "{first} helped unblock teammates",
    "{first} followed through on commitments",
    "{first} asked sharp questions in planning",
    "{first} balanced speed and quality well",
    "{first} took ownership of incidents",
    "{first} shared context generously",
    "{first} made thoughtful trade-offs",
    "{first} gave useful feedback in reviews",
]
_CONTEXTS = [
    "",
    " during the busiest weeks of the quarter",
    " even when priorities shifted",
    " across several teams",
    " without being asked",
    " in a way others could build on",
    ", which made planning more predictable",
    ", and the team noticed",
]


def _review_points(request: ReviewRequest) -> list[str]:
    first = request.employee_name.split()[0]
    points = []
    for raw in _SPLIT_POINTS.split(request.employee_review_points):
        point = _BULLET.sub("", raw.strip()).strip(" ,")
        if not point:
            continue
        word = point.split()[0]
        # Lower-case an ordinary capitalised first word so the point reads mid-sentence, but
        # keep names and acronyms ("Ada", "API") as written.
        if word[:1].isupper() and word[1:].islower() and word not in (first, "I"):
            point = point[0].lower() + point[1:]
        points.append(point)
    return points


def _words(sentence: str) -> int:
    return len(sentence.split())


def write_review(request: ReviewRequest, rng: random.Random) -> str:
    """A review of about ``request.length_words`` words (±15%), paragraphs split by ``\\n\\n``.

    Every review point becomes a sentence, in order, unless the points alone are longer than
    the requested length; then the later ones are left out to respect the length.
    """
    target = request.length_words
    names = {"name": request.employee_name, "first": request.employee_name.split()[0]}
    tone = _TONES[request.tone]
    opening = rng.choice(tone["open"]).format(**names)
    closing = rng.choice(tone["close"]).format(**names)
    # Paragraph groups: strengths first (one group per point), then growth areas.
    strengths: list[list[str]] = []
    growth: list[str] = []
    placed: list[tuple[list[str], str]] = []  # (group, kind) of each point, in order
    budget = target * 1.1 - _words(opening) - _words(closing)
    for point in _review_points(request):
        kind = "growth" if _GROWTH.search(point) else "strength"
        sentence = rng.choice(tone[kind]).format(point=point, **names)
        if _words(sentence) > budget:
            break
        budget -= _words(sentence)
        if kind == "growth":
            growth.append(sentence)
            placed.append((growth, kind))
        else:
            strengths.append([sentence])
            placed.append((strengths[-1], kind))

    def short() -> bool:
        return budget > target * 0.1  # i.e. fewer words than the target so far

    remarks = {kind: rng.sample(lines, len(lines)) for kind, lines in _REMARKS.items()}
    for group, kind in placed:
        if short() and remarks[kind] and _words(remarks[kind][-1]) <= budget:
            remark = remarks[kind].pop().format(**names)
            budget -= _words(remark)
            group.append(remark)

    if not strengths:
        strengths.append([])  # a general paragraph to hold the fillers
    # Bounded only as a guard: fillers of four words exist, so the target is reached long before.
    for i, filler in enumerate(itertools.islice(_fillers(names, rng), 10_000)):
        if not short():
            break
        if _words(filler) <= budget:
            budget -= _words(filler)
            strengths[i % len(strengths)].append(filler)

    body = [p for group in strengths for p in _paragraphs(group, rng)] + _paragraphs(growth, rng)
    return "\n\n".join([opening, *body, closing])


def _fillers(names: dict[str, str], rng: random.Random) -> Iterator[str]:
    """Endless filler sentences; an action recurs only after all the others were used."""
    actions = [a.format(**names) for a in _ACTIONS]
    while True:
        rng.shuffle(actions)
        for action in actions:
            sentence = f"{rng.choice(_LEADS)}{action}{rng.choice(_CONTEXTS)}."
            yield sentence[0].upper() + sentence[1:]


def _paragraphs(sentences: list[str], rng: random.Random) -> list[str]:
    paragraphs = []
    i = 0
    while i < len(sentences):
        size = rng.randint(3, 5)
        paragraphs.append(" ".join(sentences[i : i + size]))
        i += size
    return paragraphs


_TRAILING_PUNCT = re.compile(r"^(.*?\w)([.,;:!?']*)$")


def tokenize(text: str, rng: random.Random) -> list[str]:
    """Split ``text`` into LLM-like tokens whose concatenation is exactly ``text``."""
    tokens: list[str] = []
    for p, paragraph in enumerate(text.split("\n\n")):
        if p:
            tokens.append("\n\n")
        for w, word in enumerate(paragraph.split(" ")):
            lead = " " if w else ""
            core, punct = word, ""
            match = _TRAILING_PUNCT.match(word)
            if match and match.group(2) and rng.random() < 0.6:
                core, punct = match.group(1), match.group(2)
            if len(core) > 6 and rng.random() < 0.5:
                cut = rng.randint(3, len(core) - 3)
                tokens += [lead + core[:cut], core[cut:]]
            else:
                tokens.append(lead + core)
            if punct:
                tokens.append(punct)
    return tokens
