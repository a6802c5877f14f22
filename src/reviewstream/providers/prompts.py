"""The words we send the model for a performance review."""

from __future__ import annotations

from ..models import ReviewRequest

SYSTEM = (
    "You are an experienced engineering manager who writes fair, specific and kind performance"
    " reviews. Write plain prose in short paragraphs, no headings or lists, and do not invent"
    " facts beyond the points given."
)

_TONES = {
    "balanced": "balanced: recognise strengths and name growth areas plainly",
    "encouraging": "encouraging: lead with strengths and frame growth areas as next steps",
    "direct": "direct: be concise and concrete about both strengths and gaps",
    "formal": "formal: suited to an HR record",
}


def user_prompt(request: ReviewRequest) -> str:
    return (
        f"Write a performance review of about {request.length_words} words for "
        f"{request.employee_name}. Tone: {_TONES[request.tone]}.\n\n"
        f"Review points:\n{request.employee_review_points}"
    )


def continue_instruction(text: str) -> str:
    """The request to continue ``text``, for a model that cannot be given it as its own answer.

    It asks for the next words only; a model that restates the end anyway has the overlap
    trimmed by the provider (``continuation.after_restated_tail``).
    """
    return (
        "Your answer to the request above was interrupted. The text written so far is between"
        " the <partial> markers below. Continue it from exactly where it stops, as if it had"
        " never stopped: reply with only the text that comes next (finish the word first if it"
        " stops inside one, and start with a space or a line break if the next word needs one)."
        " Do not repeat any of the text, and add no preamble, quotes or comment.\n\n"
        f"<partial>\n{text}\n</partial>"
    )
