"""Handing a job over when its producer is lost: its next attempt, or its end as failed.

A producer is lost when its lease lapses (a ``Reaper`` finds it), its worker shuts down past
the grace, Redis fails under it for longer than ``REVIEWSTREAM_REDIS_OUTAGE_SECONDS``, or the
upstream breaks after the attempt's first token. The job then goes back to the queue and its
next attempt continues after the stored text (``REVIEWSTREAM_ON_PRODUCER_LOSS``), up to
``REVIEWSTREAM_MAX_ATTEMPTS``; past them, it fails, naming every cause.
"""

from __future__ import annotations

from ..settings import Settings
from ..store import Requeue, Store


def max_attempts(settings: Settings) -> int:
    """Attempts a job gets: with ``on_producer_loss=fail``, one (a lost producer fails it)."""
    return 1 if settings.on_producer_loss == "fail" else settings.max_attempts


async def let_go(
    store: Store,
    settings: Settings,
    job_id: str,
    cause: str,
    *,
    owner: str = "",
    attempt: int | None = None,
    only_if_lease_lapsed: bool = False,
) -> Requeue:
    """The job's producer is lost: queue its next attempt, or fail it when they are spent.

    ``owner``/``attempt``: only if this attempt still runs it; ``only_if_lease_lapsed``: only if
    its lease lapsed (the reapers; exactly one of them acts).
    """
    outcome, _ = await store.requeue(
        job_id,
        cause,
        max_attempts=max_attempts(settings),
        owner=owner,
        attempt=attempt,
        only_if_lease_lapsed=only_if_lease_lapsed,
    )
    return outcome
