"""The domain's data: review requests, job states, pages of tokens and end records.

These are the wire shapes too: the short poll, the long poll, the SSE ``end`` event and the
WebSocket ``end`` message all use them, so every mode speaks the same offset contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .settings import ProviderName

Tone = Literal["balanced", "encouraging", "direct", "formal"]


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


class ReviewRequest(BaseModel):
    """What to write: the seed article's two fields plus optional knobs."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    employee_name: str = Field(min_length=1, max_length=200, examples=["Ada Lovelace"])
    employee_review_points: str = Field(
        min_length=1,
        max_length=8000,
        examples=["Led the payments migration; mentors two juniors; needs to delegate more."],
    )
    tone: Tone = "balanced"
    length_words: int = Field(default=350, ge=50, le=1500)
    provider: ProviderName | None = Field(
        default=None, description="Override REVIEWSTREAM_PROVIDER for this job."
    )
    model: str | None = Field(
        default=None,
        max_length=200,
        description="Model name for the provider; for `simulated`, a pace preset "
        "(`sim-default`, `sim-gpt-4`, `sim-fast`).",
    )


class Usage(BaseModel):
    """Token counts reported by the provider, when it reports them."""

    input_tokens: int | None = None
    output_tokens: int | None = None


class Links(BaseModel):
    poll: str
    long_poll: str
    sse: str
    ws: str
    ui_stream: str = Field(description="The AI SDK's UI message stream (`useChat`).")
    durable_stream: str = Field(
        description="The job as a Durable Stream (catch-up, long-poll and SSE reads)."
    )


class JobCreated(BaseModel):
    id: str
    status: JobStatus
    links: Links


class JobPage(BaseModel):
    """Tokens ``[offset, next_offset)`` of a job, and where it stands."""

    id: str
    status: JobStatus
    offset: int
    next_offset: int
    tokens: list[str]
    ts: list[float] = Field(
        default_factory=list, description="Server append time of each token (epoch seconds)."
    )
    done: bool
    error: str | None = None
    usage: dict[str, Any] | None = None
    attempts: int = Field(
        default=0, description="Attempts started: 0 while first queued, more after a requeue."
    )
    sha256: str | None = Field(
        default=None, description="Once `done`: hex SHA-256 of the job's full text (UTF-8)."
    )


@dataclass(slots=True, eq=False)
class Batch:
    """Tokens ``[offset, offset + len(tokens))`` with the time each was appended.

    A notification's batch is handed to every caught-up follower of the job in a process as the
    same object, so ``wire`` caches each dialect's encoding of it in ``encoded``: N followers,
    one encoding per dialect.
    """

    offset: int
    tokens: list[str]
    ts: list[float]
    encoded: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def next_offset(self) -> int:
        return self.offset + len(self.tokens)


@dataclass(frozen=True, slots=True)
class BatchPage:
    """A long poll's answer that brings tokens: ``batch``, and the job's end when ``batch`` has
    its last tokens. Every poller one notification wakes at the same offset gets the same
    batch, so its encoding is cached on it (``wire.long_poll_body``)."""

    job_id: str
    batch: Batch
    end: JobEnd | None
    attempts: int


class JobEnd(BaseModel):
    """The last word on a job, delivered once after its last token.

    ``sha256`` is the hex SHA-256 of the job's full text (its tokens concatenated, UTF-8), so a
    client can prove it received every token exactly once.
    """

    status: JobStatus
    next_offset: int
    error: str | None = None
    usage: dict[str, Any] | None = None
    sha256: str | None = None


class JobNotice(BaseModel):
    """A job's producer changed: an attempt was lost (``queued``) or a new one began.

    ``offset`` is the number of tokens stored when it happened; a new attempt continues after
    them. ``reset`` (``REVIEWSTREAM_ON_PRODUCER_LOSS=restart`` only): the new attempt writes
    the review again from the start, after the stored tokens, which belong to earlier attempts.
    """

    status: JobStatus
    attempt: int
    offset: int
    reason: str | None = None
    reset: bool = False


class ErrorBody(BaseModel):
    error: str
    detail: Any = None
