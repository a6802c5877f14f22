"""The service's Prometheus series (prometheus_client), and the calls that record them.

Names are a contract, like settings: ``reviewstream_`` prefix, documented in the README, stable.
The ``mode`` label takes the delivery dialects' names (``MODES``).

**One set per process, made on first use.** A process's metrics are process state by nature
(prometheus_client's multiprocess mode keeps one file per process id), and the calls that
record them sit on paths that know nothing of the runtime (the store's boundary, a provider's
retries); so ``metrics()`` builds them on its first call, never at import, on a registry of
their own rather than prometheus_client's global one.

**Cheap on the delivery path.** A delivered batch, an opened or closed connection and a
long-poll answer only add to plain numbers of this process (``Tally``: no lock, no file
write); ``Metrics.flush`` moves them into the prometheus_client series, every
``FLUSH_SECONDS`` (``flushing``, in the API's lifespan), before each scrape this process
answers, and at shutdown. What happens per job or per refusal (jobs created and ended,
attempts, provider first tokens and errors, Redis errors, refusals) is recorded at once.

**Delivery lag** is observed once per delivered batch: the send time minus the append time
(``ts``) of the batch's newest token, i.e. how far behind the producer a client is once it
has the batch. Both are on this host's clock and Redis' clock (the workers stamp tokens with
Redis' ``TIME``): on one host they agree; across hosts their skew adds to it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Final, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from ..models import Batch, BatchPage, JobEnd, JobNotice, JobPage
from .rundir import MULTIPROC_ENV

MODES: Final = ("short_poll", "long_poll", "sse", "websocket", "durable_streams", "ui_stream")
LAG_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TTFT_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0)
HOLD_OUTCOMES: Final = ("tokens", "end", "empty")
FLUSH_SECONDS = 1.0


Item = TypeVar("Item")


class Tally:
    """One mode's deliveries in this process since the last flush (``open``: now)."""

    __slots__ = ("events", "flushed_open", "lag_counts", "lag_sum", "open", "tokens")

    def __init__(self) -> None:
        self.open = 0
        self.flushed_open = -1
        self.tokens = 0
        self.events = 0
        self.lag_counts = [0] * (len(LAG_BUCKETS) + 1)  # one per bucket, +Inf last
        self.lag_sum = 0.0

    def delivered(self, tokens: list[str], ts: list[float]) -> None:
        self.events += 1
        if tokens:
            self.tokens += len(tokens)
            if ts:
                lag = max(0.0, time.time() - ts[-1])
                self.lag_counts[bisect.bisect_left(LAG_BUCKETS, lag)] += 1
                self.lag_sum += lag


class Metrics:
    """Every series of the process, and the tallies of its delivery paths."""

    def __init__(self) -> None:
        multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        # Under multiprocess mode the values live in files that the scrape reads
        # (``exposition``): the families are registered nowhere.
        self.registry = CollectorRegistry(auto_describe=True)
        registry = None if multiprocess else self.registry
        self.connections = Gauge(
            "reviewstream_connections",
            "Open delivery connections (streams, sockets, polls in progress) by mode.",
            ["mode"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.delivered_tokens = Counter(
            "reviewstream_delivered_tokens",
            "Tokens delivered to clients, by mode.",
            ["mode"],
            registry=registry,
        )
        self.delivered_events = Counter(
            "reviewstream_delivered_events",
            "Messages delivered to clients (token batches and ends), by mode.",
            ["mode"],
            registry=registry,
        )
        self.delivery_lag = Histogram(
            "reviewstream_delivery_lag_seconds",
            "Send time minus append time of each delivered batch's newest token, by mode.",
            ["mode"],
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.long_poll_holds = Counter(
            "reviewstream_long_poll_holds",
            "Long polls answered, by what ended the hold (tokens, the end, or empty: timeout"
            " or a producer notice).",
            ["outcome"],
            registry=registry,
        )
        self.jobs_created = Counter(
            "reviewstream_jobs_created", "Jobs accepted and queued.", registry=registry
        )
        self.jobs_ended = Counter(
            "reviewstream_jobs_ended", "Jobs ended, by final status.", ["status"], registry=registry
        )
        self.job_attempts = Counter(
            "reviewstream_job_attempts",
            "Attempts started (a job's first, and each after a lost producer).",
            registry=registry,
        )
        self.provider_first_token = Histogram(
            "reviewstream_provider_first_token_seconds",
            "Time from a provider stream's start (retries included) to its first token.",
            ["provider"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.provider_errors = Counter(
            "reviewstream_provider_errors",
            "Provider failures (each try, retried or not), by provider and kind.",
            ["provider", "kind"],
            registry=registry,
        )
        self.redis_errors = Counter(
            "reviewstream_redis_errors",
            "Redis failures met by the store, by operation.",
            ["operation"],
            registry=registry,
        )
        self.refusals = Counter(
            "reviewstream_refusals",
            "Requests and sockets refused, by HTTP status and reason (the error's kind).",
            ["status", "reason"],
            registry=registry,
        )
        self.tallies = {mode: Tally() for mode in MODES}
        self.holds = dict.fromkeys(HOLD_OUTCOMES, 0)
        for mode in MODES:  # every mode's series exists from the start, at 0
            self.delivered_tokens.labels(mode)
            self.delivered_events.labels(mode)
            self.delivery_lag.labels(mode)
        for status in ("done", "failed", "cancelled"):
            self.jobs_ended.labels(status)
        for outcome in HOLD_OUTCOMES:
            self.long_poll_holds.labels(outcome)

    def flush(self) -> None:
        """Move the tallies into the series (on the loop that delivers: the tallies are its)."""
        for mode, tally in self.tallies.items():
            if tally.open != tally.flushed_open:
                self.connections.labels(mode).set(tally.open)
                tally.flushed_open = tally.open
            if tally.events:
                self.delivered_events.labels(mode).inc(tally.events)
                tally.events = 0
            if tally.tokens:
                self.delivered_tokens.labels(mode).inc(tally.tokens)
                tally.tokens = 0
            if tally.lag_sum or any(tally.lag_counts):
                lag = self.delivery_lag.labels(mode)
                # prometheus_client keeps a histogram child's buckets (non-cumulative) and sum
                # as values of their own; there is no public "observe n times".
                for i, n in enumerate(tally.lag_counts):
                    if n:
                        lag._buckets[i].inc(n)
                        tally.lag_counts[i] = 0
                lag._sum.inc(tally.lag_sum)
                tally.lag_sum = 0.0
        for outcome, n in self.holds.items():
            if n:
                self.long_poll_holds.labels(outcome).inc(n)
                self.holds[outcome] = 0


_metrics: list[Metrics] = []  # the process's one, once made


def metrics() -> Metrics:
    """This process's metrics, made on the first call."""
    if not _metrics:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: the same exposition in both modes
        _metrics.append(Metrics())
    return _metrics[0]


# The recording calls: one line where the thing happens.


def sent(mode: str, item: Item) -> Item:
    """``item`` (a batch, a page, an end…) is being delivered in ``mode``; returns it."""
    if isinstance(item, Batch):
        metrics().tallies[mode].delivered(item.tokens, item.ts)
    elif isinstance(item, BatchPage):
        metrics().tallies[mode].delivered(item.batch.tokens, item.batch.ts)
    elif isinstance(item, JobPage):
        if item.tokens or item.done:
            metrics().tallies[mode].delivered(item.tokens, item.ts)
    elif isinstance(item, JobEnd):
        metrics().tallies[mode].events += 1
    elif isinstance(item, JobNotice):
        pass  # a producer's change: neither tokens nor the end
    return item


def tally(mode: str) -> Tally:
    """``mode``'s tally: ``tally(mode).open += 1`` when a connection opens, ``-= 1`` when it
    closes."""
    return metrics().tallies[mode]


def long_poll_answered(answer: JobPage | BatchPage) -> None:
    if isinstance(answer, BatchPage):
        outcome = "tokens"
    else:
        outcome = "end" if answer.done else "tokens" if answer.tokens else "empty"
    metrics().holds[outcome] += 1


def job_created() -> None:
    metrics().jobs_created.inc()


def job_ended(status: str) -> None:
    metrics().jobs_ended.labels(status).inc()


def attempt_started() -> None:
    metrics().job_attempts.inc()


def first_token(provider: str, seconds: float) -> None:
    metrics().provider_first_token.labels(provider).observe(seconds)


def provider_error(provider: str, kind: str) -> None:
    metrics().provider_errors.labels(provider, kind).inc()


def redis_error(operation: str) -> None:
    metrics().redis_errors.labels(operation).inc()


def refused(status: int, reason: str) -> None:
    metrics().refusals.labels(str(status), reason).inc()


@contextlib.asynccontextmanager
async def flushing(seconds: float = FLUSH_SECONDS) -> AsyncIterator[Metrics]:
    """Flush this process's tallies every ``seconds`` while open, and once more at the end."""
    m = metrics()

    async def loop() -> None:
        while True:
            await asyncio.sleep(seconds)
            m.flush()

    task = asyncio.create_task(loop(), name="reviewstream-metrics-flush")
    try:
        yield m
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        m.flush()
