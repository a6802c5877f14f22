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
