"""Continuing a stored text: what the hosted providers share when a new attempt picks up a job.

Stored tokens never change (the offset contract), so a continued attempt may only *append*. The
two ways to get a hosted model to write on after a given text each leave the start of its answer
slightly off, and everything here trims that start before a token reaches the store:

* **prefill** — the text goes to the model as the beginning of its own answer. APIs and chat
  templates drop or refuse trailing whitespace there, so the text is sent without it
  (:func:`split_trailing_space`) and the same whitespace, if the model writes it again, is
  dropped from the start of the answer (:func:`after_space`). Some servers (Mistral's API)
  echo the prefill at the start of the answer: :func:`after_echo` drops that echo.
* **instruction** — the text goes to the model inside a request to continue it
  (``prompts.continue_instruction``). Models often restate the last words before going on;
  :func:`after_restated_tail` drops such an overlap, looking at most ``MAX_OVERLAP`` characters
  into the answer and only at its start.

Each is a rule for :func:`drop_leading`, which holds the first deltas back only until the rule
can decide, then passes everything through untouched, on the same delta boundaries.
:func:`prefill_or_instruct` runs a prefilled request and, if the server refuses prefill
(Claude 4.6 and later answer 400; an OpenAI-compatible host that rejects unknown fields answers
400 or 422), the same continuation by instruction.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Collection

from ..errors import UpstreamStatusError
from ..models import Usage

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_OVERLAP",
    "Rule",
    "after_echo",
    "after_restated_tail",
    "after_space",
    "drop_leading",
    "prefill_or_instruct",
    "split_trailing_space",
]

Stream = AsyncGenerator[str | Usage, None]

Rule = Callable[[str, bool], int | None]
"""Given the answer's start so far and whether it is complete, how many characters to drop, or
``None`` while more text is needed to tell."""

#: The longest restated tail an instruction-mode answer is checked for.
MAX_OVERLAP = 200
# A shorter restatement is only dropped when it is whitespace: "...said no" + "no, ..." or
# "mis" + "sion" are ordinary text, not a model repeating itself.
_MIN_OVERLAP = 3


def split_trailing_space(text: str) -> tuple[str, str]:
    """``text`` without its trailing whitespace, and that whitespace."""
    body = text.rstrip()
    return body, text[len(body) :]


def after_space(space: str) -> Rule:
    """Drop from the answer's start as much of ``space`` as it begins with.

    ``space`` is the whitespace the prefill was sent without: the stored text already ends
    with it, so a model that writes it again (" She", "\\n\\nShe") would double it.
    """

    def rule(head: str, complete: bool) -> int | None:
        common = _common_prefix(space, head)
        if common == len(head) < len(space) and not complete:
            return None  # all whitespace so far: the next delta may write more of it
        return common

    return rule


def after_echo(sent: str) -> Rule:
    """Drop ``sent`` from the answer's start if the server echoes it there."""

    def rule(head: str, complete: bool) -> int | None:
        if head.startswith(sent):
            return len(sent)
        if sent.startswith(head) and not complete:
            return None
        return 0

    return rule


def after_restated_tail(stored: str, window: int = MAX_OVERLAP) -> Rule:
    """Drop the longest end of ``stored`` (within ``window``) that the answer restates.

    The answer is held while its start still occurs in the stored tail short of its end (it
    may be on its way to restating it), and never longer than ``window`` characters. An end
    the answer starts with counts as restated when it is whitespace, or at least
    ``_MIN_OVERLAP`` characters that either end where the answer's word ends ("two" +
    " juniors") or are the stored text's unfinished last word written out ("migra" +
    "tion"); otherwise it is the answer's own text (" the" of " theme" after "...led the").
    """
    tail = stored[-window:]

    def restated(head: str, size: int) -> bool:
        overlap, rest = head[:size], head[size:]
        if overlap.isspace():
            return True
        if size < _MIN_OVERLAP:
            return False
        if not rest or not (overlap[-1].isalnum() and rest[0].isalnum()):
            return True  # the answer's word ends where the overlap does
        before = stored[-size - 1 : -size]
        return overlap[0].isalnum() and not before.isalnum()  # a whole last word, finished

    def rule(head: str, complete: bool) -> int | None:
        if not complete and len(head) < len(tail) and head in tail[:-1]:
            return None
        sizes = [n for n in range(min(len(head), len(tail)), 0, -1) if tail.endswith(head[:n])]
        if sizes and sizes[0] == len(head) and not complete:
            return None  # all restated so far: the next character tells where it ends
        return next((n for n in sizes if restated(head, n)), 0)

    return rule


async def drop_leading(items: Stream, rule: Rule) -> Stream:
    """``items`` with as many characters dropped from its text's start as ``rule`` says.

    Deltas are held only until ``rule`` decides; the rest passes through as it comes. Closing
    this generator closes ``items`` (which hangs up the upstream connection).
    """
    head: list[str] | None = []
    async with contextlib.aclosing(items) as source:
        async for item in source:
            if head is None:
                yield item
                continue
            if isinstance(item, str):
                head.append(item)
                cut = rule("".join(head), False)
                if cut is None:
                    continue
            else:  # usage: the text is complete
                cut = rule("".join(head), True) or 0
            for piece in _without_first(head, cut):
                yield piece
            head = None
            if not isinstance(item, str):
                yield item
    if head:  # the stream ended, without usage, while the rule was still waiting
        for piece in _without_first(head, rule("".join(head), True) or 0):
            yield piece


async def prefill_or_instruct(
    prefilled: Callable[[], Stream],
    instructed: Callable[[], Stream],
    *,
    refusals: Collection[int],
    on_refused: Callable[[], None],
    name: str,
) -> Stream:
    """``prefilled()``'s stream; if it is refused (a status in ``refusals`` before any text),
    ``instructed()``'s instead, after calling ``on_refused`` so the provider can remember it.
    """
    yielded = False
    try:
        async with contextlib.aclosing(prefilled()) as items:
            async for item in items:
                yielded = True
                yield item
        return
    except UpstreamStatusError as err:
        if yielded or err.status not in refusals:
            raise
        logger.warning("%s refused a prefilled continuation (%s); instructing instead", name, err)
    on_refused()
    async with contextlib.aclosing(instructed()) as items:
        async for item in items:
            yield item


def _common_prefix(a: str, b: str) -> int:
    size = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        size += 1
    return size


def _without_first(pieces: list[str], count: int) -> list[str]:
    """``pieces`` less their first ``count`` characters, keeping the other boundaries."""
    kept = []
    for piece in pieces:
        if count >= len(piece):
            count -= len(piece)
            continue
        kept.append(piece[count:])
        count = 0
    return kept
