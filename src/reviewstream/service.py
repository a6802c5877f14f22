"""ReviewService: what the routes ask for, in the domain's words.

Routes parse and encode; this module creates jobs, answers polls and opens followers. It holds
the process's long-lived parts (the runtime) and is built once per app in the lifespan. Every
call takes the caller's ``Principal``; a job the caller may not see is ``JobNotFound``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from .admission import Admission, StreamCounter, Watchers
from .errors import JobNotFound, ServerDraining
from .follow import Follower, FollowOptions
from .holds import Holds
from .hub import Hub
from .models import Batch, BatchPage, JobEnd, JobNotice, JobPage, JobStatus, ReviewRequest
from .providers import default_model, validate_job
from .runtime import Runtime
from .settings import Settings
from .store import Snapshot, Store, new_job_id
from .tenancy import Gatekeeper, Principal
from .workers import Producers


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

    async def read(
        self, job_id: str, offset: int | None, limit: int, caller: Principal
    ) -> Snapshot:
        """The stored tokens from ``offset`` on (at most ``limit``) and where the job stands;
        ``offset`` None reads nothing, from the job's current end (Durable Streams' ``now``)."""
        snapshot = await self.store.jobs.read(job_id, offset or 0, 0 if offset is None else limit)
        _check_may_see(caller, job_id, snapshot.tenant)
        self.watchers.polled(job_id)
        if offset is None:
            return dataclasses.replace(snapshot, offset=snapshot.count, tokens=[], ts=[])
        return snapshot

    async def long_poll(
        self, job_id: str, offset: int, limit: int | None, hold_seconds: float, caller: Principal
    ) -> JobPage | BatchPage:
        """Like ``poll`` but held until a new token, the end, or ``hold_seconds`` (capped).

        New tokens come as a ``BatchPage``: the batch every caught-up poller at that offset
        shares, so ``wire`` encodes its answer once for all of them.
        """
        hold_seconds = min(hold_seconds, self.settings.long_poll_max_timeout)
        async with self.follow(job_id, offset, caller) as follower:
            try:
                async with self.holds.hold(hold_seconds):
                    item = await follower.next()
            except (TimeoutError, ServerDraining):
                return await self.poll(job_id, offset, limit, caller)
            attempts = follower.attempts
        if isinstance(item, JobEnd):
            return JobPage(
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
        if isinstance(item, JobNotice):  # the producer changed: say so now, with no tokens
            return JobPage(
                id=job_id,
                status=item.status,
                offset=offset,
                next_offset=offset,
                tokens=[],
                done=False,
                attempts=attempts,
            )
        if limit is not None and len(item.tokens) > limit:
            item = Batch(item.offset, item.tokens[:limit], item.ts[:limit])
        end = follower.known_end
        done = end is not None and item.next_offset >= end.next_offset
        return BatchPage(job_id, item, end if done else None, attempts)

    @contextlib.asynccontextmanager
    async def follow(
        self, job_id: str, offset: int, caller: Principal, *, page_size: int | None = None
    ) -> AsyncIterator[Follower]:
        """A follower of ``job_id`` from ``offset``; raises ``JobNotFound`` before yielding.

        The stream counts against the caller's key (``QuotaExceeded`` past its limit).
        ``page_size``: chunks per list read, when not the setting's (a Durable Stream's chunk
        is a whole append).
        """
        # The parts' own context managers, inlined into one: a long poll opens a follower per
        # request.
        counted = await self.streams.take(caller)
        self.followers += 1
        try:
            async with self.hub.join(job_id) as feed:
                options = self.follow_options
                if page_size is not None:
                    options = FollowOptions(page_size=page_size)
                follower = Follower(self.store.jobs, feed, job_id, offset, options)
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
