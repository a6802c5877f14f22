"""Exceptions of reviewstream.

The tree::

    ReviewstreamError
    ├── JobNotFound          unknown job, or its keys expired after retention  (HTTP 404)
    │   └── StreamGone       a Durable Stream deleted while its forks read it  (HTTP 410)
    ├── JobFinished          the job already ended; e.g. cancelling it         (HTTP 409)
    ├── InvalidInput         a malformed id, offset, limit, timeout or header    (HTTP 422)
    ├── ProviderConfigError  unknown provider or model, or a provider without its key (422)
    ├── StoreError           Redis failed or is unreachable (wraps redis errors) (HTTP 503)
    ├── ServerDraining       this server is shutting down: live streams end, clients resume (503)
    ├── Unauthorized         no credential, a wrong key, an expired or forged token  (HTTP 401)
    ├── Forbidden            a credential that may not do this: a token creating a job (403)
    ├── TooLarge             a Durable Streams append above its limit               (HTTP 413)
    ├── StreamConflict       a Durable Stream that cannot be so: a deleted fork source (409)
    ├── Refused              an admission limit said no for now (carries retry_after)
    │   ├── QuotaExceeded    a per-key limit: active jobs, jobs per minute, streams (HTTP 429)
    │   └── Overloaded       the queue is full, or no worker is alive                (HTTP 503)
    └── ProviderError        the model upstream failed; ends the job as failed
        ├── UpstreamStatusError   a non-2xx answer (carries status, retryable or not)
        ├── UpstreamUnavailable   could not connect, or the connection broke before an answer
        ├── UpstreamTimeout       connect, first token or silence between tokens
        └── UpstreamProtocolError in-band error event, truncated stream, malformed data
            └── UpstreamInterrupted  the stream broke or ended before its end marker

Each class knows its ``http_status`` (500 unless it says otherwise); ``web/answers.py`` turns an
error into its JSON answer or its WebSocket close code (``4000 + http_status``) from that one table.
Redis and httpx exceptions are wrapped at the boundary (``raise StoreError(...) from e``), so
routes never catch them.
"""

from __future__ import annotations


class ReviewstreamError(Exception):
    """Base of every error reviewstream raises on purpose."""

    http_status = 500  # answers it (and 4000 + it closes a WebSocket)


class JobNotFound(ReviewstreamError):
    http_status = 404

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} not found (never created, or expired after retention)")
        self.job_id = job_id


class JobFinished(ReviewstreamError):
    http_status = 409

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"job {job_id!r} already ended with status {status!r}")
        self.job_id = job_id
        self.status = status


class ProviderConfigError(ReviewstreamError, ValueError):
    """A job asks for a provider or model this deployment cannot run."""

    http_status = 422


class StreamGone(JobNotFound):
    """A Durable Stream deleted while forks still read it."""

    http_status = 410


class TooLarge(ReviewstreamError):
    """A Durable Streams append above ``REVIEWSTREAM_MAX_APPEND_BYTES``."""

    http_status = 413


class StreamConflict(ReviewstreamError):
    """A Durable Streams request that conflicts with the stream's state (forking a deleted
    source)."""

    http_status = 409


class InvalidInput(ReviewstreamError):
    """A request's parameter is malformed or out of range: ``where`` is its place and name,
    e.g. ``("query", "offset")``, as validation errors name them."""

    http_status = 422

    def __init__(self, where: tuple[str, str], problem: str) -> None:
        super().__init__(f"invalid request: {'.'.join(where)}: {problem}")
        self.where = where
        self.problem = problem


class StoreError(ReviewstreamError):
    """Redis failed; the message says which operation."""

    http_status = 503


class ServerDraining(ReviewstreamError):
    """This server began shutting down; a follower should resume, at its offset, elsewhere."""

    http_status = 503

    def __init__(self) -> None:
        super().__init__("this server is shutting down: resume from your offset on another")


class ProviderError(ReviewstreamError):
    """The model upstream failed. ``retryable`` is only honoured before the first token."""

    retryable: bool = False


class UpstreamStatusError(ProviderError):
    def __init__(self, status: int, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"upstream answered HTTP {status}: {detail}")
        self.status = status
        self.retry_after = retry_after
        self.retryable = status in (408, 409, 429) or status >= 500


class UpstreamUnavailable(ProviderError):
    retryable = True


class UpstreamTimeout(ProviderError):
    retryable = True


class UpstreamProtocolError(ProviderError):
    """In-band error, a stream cut before its end marker, or data that does not parse."""


class UpstreamInterrupted(UpstreamProtocolError):
    """The stream broke, or ended cleanly, before its end marker: the output is incomplete.

    After a job's first token this is a lost producer, not a failed job: its next attempt
    continues after the stored text.
    """


class Unauthorized(ReviewstreamError):
    """No credential, an unknown API key, or an expired or forged stream token."""

    http_status = 401


class Forbidden(ReviewstreamError):
    """A valid credential that may not do this (a stream token creating a job, another job)."""

    http_status = 403


class Refused(ReviewstreamError):
    """An admission limit said no for now; ``retry_after`` says when to try again (seconds)."""

    http_status = 503

    def __init__(self, message: str, *, limit: str, retry_after: float) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after = retry_after


class QuotaExceeded(Refused):
    """A per-key limit: active jobs, jobs per minute, open streams (HTTP 429)."""

    http_status = 429


class Overloaded(Refused):
    """The service as a whole cannot take the job now: queue full, no worker alive (503)."""
