"""What the store's parts hand each other and their callers: reads, queue entries, leases,
claims, appends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..models import JobEnd, JobStatus


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A consistent read of tokens ``[offset, offset + len(tokens))`` and the job's state."""

    job_id: str
    status: JobStatus
    offset: int
    tokens: list[str]
    ts: list[float]
    count: int
    error: str | None
    usage: dict[str, Any] | None
    tenant: str = ""  # the API key NAME that created the job; "" in open mode
    attempts: int = 0
    sha256: str | None = None

    @property
    def next_offset(self) -> int:
        return self.offset + len(self.tokens)

    @property
    def done(self) -> bool:
        """Ended, and nothing past ``next_offset`` is left to read."""
        return self.status.terminal and self.next_offset >= self.count

    def end(self) -> JobEnd:
        return JobEnd(
            status=self.status,
            next_offset=self.count,
            error=self.error,
            usage=self.usage,
            sha256=self.sha256,
        )


@dataclass(frozen=True, slots=True)
class Attempts:
    """Where a job's attempts stand: its status, the number and owner token of its latest
    attempt (0 and '' before the first), and its queue shard."""

    status: JobStatus
    attempt: int
    owner: str
    shard: int


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """An entry of shard ``shard``'s queue: job ``job_id`` entered it at attempt ``attempt`` (0
    when created; N when attempt N was lost, for ``cause``)."""

    entry_id: str
    job_id: str
    shard: int = 0
    attempt: int = 0
    cause: str = ""


@dataclass(frozen=True, slots=True)
class Lease:
    """The lease of attempt ``attempt`` of job ``job_id``, in shard ``shard``'s lease index."""

    job_id: str
    attempt: int
    shard: int = 0

    @property
    def member(self) -> str:
        return f"{self.job_id}#{self.attempt}"

    @classmethod
    def of(cls, member: str, shard: int) -> Lease:
        job_id, _, attempt = member.rpartition("#")
        return cls(job_id, int(attempt), shard)


@dataclass(frozen=True, slots=True)
class Claim:
    """One attempt at a job: ``owner`` fences its writes; ``offset`` tokens were stored before."""

    job_id: str
    attempt: int
    owner: str
    offset: int
    shard: int = 0

    @property
    def lease(self) -> Lease:
        return Lease(self.job_id, self.attempt, self.shard)


@dataclass(frozen=True, slots=True)
class Append:
    """One APPEND of attempt ``owner``: ``tokens`` at ``offset`` (None: wherever the list
    ends), each with its time in ``stamps`` (seconds on the Redis clock, as decimal text; empty:
    the append's own time)."""

    job_id: str
    owner: str
    offset: int | None
    tokens: Sequence[str]
    stamps: Sequence[str] = ()
