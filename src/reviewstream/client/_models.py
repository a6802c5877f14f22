"""What the client hands its caller: a created ``Job``, a poll's ``Page``, and the
``TokenBatch``es and ``End`` that ``follow()`` yields, each built from the API's JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Job:
    """A created job: its id, status and the relative link of each delivery mode."""

    id: str
    status: str
    links: dict[str, str]


@dataclass(frozen=True, slots=True)
class Page:
    """A short or long poll answer: tokens ``[offset, next_offset)`` and where the job stands."""

    id: str
    status: str
    offset: int
    next_offset: int
    tokens: list[str]
    ts: list[float]
    done: bool
    error: str | None = None
    usage: dict[str, Any] | None = None
    attempts: int = 0
    sha256: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Page:
        """Build a page from the API's JSON answer."""
        tokens = list(data["tokens"])
        return cls(
            id=data["id"],
            status=data["status"],
            offset=int(data["offset"]),
            next_offset=int(data["next_offset"]),
            tokens=tokens,
            ts=timestamps(data.get("ts"), len(tokens)),
            done=bool(data["done"]),
            error=data.get("error"),
            usage=data.get("usage"),
            attempts=int(data.get("attempts") or 0),
            sha256=data.get("sha256"),
        )


@dataclass(frozen=True, slots=True)
class TokenBatch:
    """Tokens ``[offset, next_offset)`` of a job, with the server's append time of each."""

    offset: int
    tokens: list[str]
    ts: list[float] = field(default_factory=list)

    @property
    def next_offset(self) -> int:
        """The offset to resume from after this batch."""
        return self.offset + len(self.tokens)

    @property
    def text(self) -> str:
        """The batch's tokens joined."""
        return "".join(self.tokens)


@dataclass(frozen=True, slots=True)
class End:
    """The end of a job: its final status, token count, error (if failed), usage, and the
    SHA-256 of its whole text."""

    status: str
    next_offset: int
    error: str | None = None
    usage: dict[str, Any] | None = None
    sha256: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> End:
        """Build an end from an SSE ``end`` event, a WebSocket ``end`` message or a last page."""
        return cls(
            status=data["status"],
            next_offset=int(data["next_offset"]),
            error=data.get("error"),
            usage=data.get("usage"),
            sha256=data.get("sha256"),
        )


def token_batch(data: dict[str, Any]) -> TokenBatch:
    """A batch from an SSE ``token`` event or a WebSocket ``tokens`` message."""
    tokens = list(data["tokens"])
    return TokenBatch(int(data["offset"]), tokens, timestamps(data.get("ts"), len(tokens)))


def timestamps(raw: Any, count: int) -> list[float]:
    """``ts`` may be one number for the batch or one per token; always return one per token."""
    if isinstance(raw, int | float):
        return [float(raw)] * count
    if isinstance(raw, list):
        return [float(t) for t in raw]
    return []
