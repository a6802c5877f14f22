"""ReviewService: what the routes ask for, in the domain's words.

Routes parse and encode; this module creates jobs, answers polls and opens followers. It holds
the process's long-lived parts (the runtime) and is built once per app in the lifespan. Every
call takes the caller's ``Principal``; a job the caller may not see is ``JobNotFound``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from .admission import Admission, StreamCounter, Watchers
from .errors import JobNotFound, ServerDraining
from .follow import Follower, FollowOptions
from .hub import Hub
from .models import Batch, JobEnd, JobNotice, JobPage, JobStatus, ReviewRequest
from .providers import default_model, validate_job
from .runtime import Runtime
from .settings import Settings
from .store import Snapshot, Store, new_job_id
from .tenancy import Gatekeeper, Principal
from .wire import long_poll_answer, page_json
from .worker import Producers


def page_of(snapshot: Snapshot) -> JobPage:
    return JobPage(
        id=snapshot.job_id,
        status=snapshot.status,
        offset=snapshot.offset,
        next_offset=snapshot.next_offset,
        tokens=snapshot.tokens,
        ts=snapshot.ts,
        done=snapshot.done,
        error=snapshot.error,
        usage=snapshot.usage,
        attempts=snapshot.attempts,
        sha256=snapshot.sha256 if snapshot.done else None,
    )


class Holds:
    """The deadlines of held long polls: one timer per ``tick`` for every poll due in it.

    ``asyncio.timeout`` arms a timer per request (~12 µs under uvloop; with the subscribe
    timeout of ``Hub.join``, 5% of the server's CPU in the long-poll profile of
    benchmarks/README.md); here the polls whose deadlines fall in the same tick share one
    timer, and a poll costs a set insertion. A deadline is rounded down to its tick, so a
    hold never outlasts what the client asked for (its own read timeout may be the same
    number). A poll still held at its deadline is cancelled and raises ``TimeoutError``, as
    under ``asyncio.timeout``.
    """

    def __init__(self, tick: float = 0.01) -> None:
        self.tick = tick
        self._due: dict[int, set[Hold]] = {}

    def hold(self, seconds: float) -> Hold:
        return Hold(self, seconds)

    def _enter(self, hold: Hold, seconds: float) -> int:
        loop = asyncio.get_running_loop()
        slot = math.floor((loop.time() + seconds) / self.tick)
        due = self._due.get(slot)
        if due is None:
            due = self._due[slot] = set()
            loop.call_at(slot * self.tick, self._expire, slot)
        due.add(hold)
        return slot

    def _leave(self, hold: Hold, slot: int) -> None:
        due = self._due.get(slot)
        if due is not None:
            due.discard(hold)

    def _expire(self, slot: int) -> None:
        for hold in self._due.pop(slot, ()):
            hold.expire()


class Hold:
    """``async with holds.hold(seconds)``: what runs inside is cancelled at the deadline."""

    __slots__ = ("_cancelling", "_holds", "_seconds", "_slot", "_task", "expired")

    def __init__(self, holds: Holds, seconds: float) -> None:
        self._holds = holds
        self._seconds = seconds
        self._slot = 0
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self.expired = False

    async def __aenter__(self) -> Hold:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a hold needs a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._slot = self._holds._enter(self, self._seconds)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: Any
    ) -> None:
        if not self.expired:
            self._holds._leave(self, self._slot)
        elif kind is asyncio.CancelledError and self._task is not None:
            if self._task.uncancel() <= self._cancelling:  # our cancel, nobody else's
                raise TimeoutError from error

    def expire(self) -> None:
        self.expired = True
        if self._task is not None:
            self._task.cancel()


@dataclass
class ReviewService:
    settings: Settings
    store: Store
    hub: Hub
    gate: Gatekeeper
    admission: Admission
    streams: StreamCounter
    watchers: Watchers
    worker: Producers | None = None
    followers: int = 0  # live followers in this process, for /metrics
    holds: Holds = field(default_factory=Holds)

    @classmethod
    def on(cls, runtime: Runtime) -> ReviewService:
        return cls(
            runtime.settings,
            runtime.store,
            runtime.hub,
            runtime.gate,
            runtime.admission,
            runtime.streams,
            runtime.watchers,
            runtime.worker,
        )

    @functools.cached_property
    def follow_options(self) -> FollowOptions:
        return FollowOptions(page_size=self.settings.page_size)

    async def create(self, request: ReviewRequest, caller: Principal) -> tuple[str, JobStatus]:
        """Queue a generation job for the request; returns its id and status.

        Raises ``Forbidden`` for a stream token, ``ProviderConfigError`` for what this
        deployment cannot run, ``QuotaExceeded`` or ``Overloaded`` when admission says no.
        """
        caller.check_may_create()
        provider = request.provider or self.settings.provider
        model = request.model or default_model(provider, self.settings)
        validate_job(provider, model, self.settings)
        await self.admission.check_capacity()
        job_id = new_job_id()
        await self.admission.admit(caller, job_id)
        # A job whose entry never made it to the queue (this process died in between) expires
        # when it would have, had the reaper failed it at its queued timeout.
        s = self.settings
        await self.store.create(
            request,
            provider=provider,
            model=model,
            tenant=caller.tenant,
            job_id=job_id,
            unclaimed_ttl_seconds=s.queued_timeout_seconds + s.retention_seconds,
        )
        return job_id, JobStatus.QUEUED

    def stream_token(self, job_id: str, caller: Principal) -> str | None:
        """The token that lets a browser read and cancel the job (None in open mode)."""
        return self.gate.token_for(job_id, caller)

    async def poll(self, job_id: str, offset: int, limit: int | None, caller: Principal) -> JobPage:
        """Short poll: the stored tokens from ``offset`` on, now."""
        snapshot = await self.store.jobs.read(job_id, offset, limit or self.settings.page_size)
        _check_may_see(caller, job_id, snapshot.tenant)
        self.watchers.polled(job_id)
        return page_of(snapshot)

    async def long_poll(
        self, job_id: str, offset: int, limit: int | None, hold_seconds: float, caller: Principal
    ) -> bytes:
        """Like ``poll`` but held until a new token, the end, or ``hold_seconds`` (capped).

        Returns the answer's JSON (a ``JobPage``). The pollers that one notification wakes at
        the same offset share one encoding of it (``wire.long_poll_answer``).
        """
        hold_seconds = min(hold_seconds, self.settings.long_poll_max_timeout)
        async with self.follow(job_id, offset, caller) as follower:
            try:
                async with self.holds.hold(hold_seconds):
                    item = await follower.next()
            except (TimeoutError, ServerDraining):
                return page_json(await self.poll(job_id, offset, limit, caller))
            attempts = follower.attempts
        if isinstance(item, JobEnd):
            return page_json(
                JobPage(
                    id=job_id,
                    status=item.status,
                    offset=offset,
                    next_offset=max(offset, item.next_offset),
                    tokens=[],
                    done=True,
                    error=item.error,
                    usage=item.usage,
                    attempts=attempts,
                    sha256=item.sha256,
                )
            )
        if isinstance(item, JobNotice):  # the producer changed: say so now, with no tokens
            return page_json(
                JobPage(
                    id=job_id,
                    status=item.status,
                    offset=offset,
                    next_offset=offset,
                    tokens=[],
                    done=False,
                    attempts=attempts,
                )
            )
        if limit is not None and len(item.tokens) > limit:
            item = Batch(item.offset, item.tokens[:limit], item.ts[:limit])
        end = follower.known_end
        done = end is not None and item.next_offset >= end.next_offset
        return long_poll_answer(job_id, item, end if done else None, attempts)

    @contextlib.asynccontextmanager
    async def follow(self, job_id: str, offset: int, caller: Principal) -> AsyncIterator[Follower]:
        """A follower of ``job_id`` from ``offset``; raises ``JobNotFound`` before yielding.

        The stream counts against the caller's key (``QuotaExceeded`` past its limit).
        """
        # One generator frame where nesting the parts' own context managers took four: a long
        # poll opens a follower per request (benchmarks/README.md, "Long poll: where the time
        # goes").
        counted = await self.streams.take(caller)
        self.followers += 1
        try:
            async with self.hub.join(job_id) as feed:
                follower = Follower(self.store.jobs, feed, job_id, offset, self.follow_options)
                await follower.start()  # proves the job exists, so routes can answer 404 first
                _check_may_see(caller, job_id, follower.tenant)
                self.watchers.opened(job_id)
                try:
                    yield follower
                finally:
                    self.watchers.closed(job_id)
        finally:
            self.followers -= 1
            if counted:
                self.streams.give_back(caller)

    def drain(self) -> None:
        """A shutdown began: live streams end, held polls answer; clients resume elsewhere.

        The workers this process runs (inline, in a thread or in a child process) stop
        claiming, and their grace period starts now.
        """
        self.hub.drain()
        if self.worker is not None:
            self.worker.begin_shutdown()

    async def cancel(self, job_id: str, caller: Principal) -> None:
        """End the job as cancelled; ``JobFinished`` if it had ended already."""
        by_key = not caller.open and caller.job_id is None
        _check_may_see(caller, job_id, await self.store.jobs.tenant_of(job_id) if by_key else "")
        await self.store.cancel(job_id)


def _check_may_see(caller: Principal, job_id: str, owner: str) -> None:
    if not caller.may_see(job_id, owner):
        raise JobNotFound(job_id)
