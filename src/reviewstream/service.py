"""ReviewService: what the routes ask for, in the domain's words.

Routes parse and encode; this module creates jobs, answers polls and opens followers. It holds
the process's long-lived parts (store, hub, settings) and is built once per app in the lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .errors import ServerDraining
from .follow import Follower, FollowOptions, open_follower
from .hub import Hub
from .models import Batch, JobEnd, JobPage, JobStatus, ReviewRequest
from .providers import default_model, validate_job
from .settings import Settings
from .store import JobStore, Snapshot
from .worker import Worker


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
    )


@dataclass
class ReviewService:
    settings: Settings
    store: JobStore
    hub: Hub
    worker: Worker | None = None
    followers: int = 0  # live followers in this process, for /metrics

    @property
    def follow_options(self) -> FollowOptions:
        return FollowOptions(page_size=self.settings.page_size)

    async def create(self, request: ReviewRequest) -> tuple[str, JobStatus]:
        """Queue a generation job for the request; returns its id and status."""
        provider = request.provider or self.settings.provider
        model = request.model or default_model(provider, self.settings)
        validate_job(provider, model, self.settings)
        job_id = await self.store.create(request, provider=provider, model=model)
        return job_id, JobStatus.QUEUED

    async def poll(self, job_id: str, offset: int, limit: int | None) -> JobPage:
        """Short poll: the stored tokens from ``offset`` on, now."""
        snapshot = await self.store.read(job_id, offset, limit or self.settings.page_size)
        return page_of(snapshot)

    async def long_poll(
        self, job_id: str, offset: int, limit: int | None, hold_seconds: float
    ) -> JobPage:
        """Like ``poll`` but held until a new token, the end, or ``hold_seconds`` (capped)."""
        hold_seconds = min(hold_seconds, self.settings.long_poll_max_timeout)
        async with self.follow(job_id, offset) as follower:
            try:
                async with asyncio.timeout(hold_seconds):
                    item = await follower.next()
            except (TimeoutError, ServerDraining):
                return await self.poll(job_id, offset, limit)
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
            )
        return self._page_of_batch(job_id, item, limit, follower)

    def _page_of_batch(
        self, job_id: str, batch: Batch, limit: int | None, follower: Follower
    ) -> JobPage:
        if limit is not None:
            batch = Batch(batch.offset, batch.tokens[:limit], batch.ts[:limit])
        end = follower.feed_end
        done = end is not None and batch.next_offset >= end.next_offset
        return JobPage(
            id=job_id,
            status=end.status if done and end else JobStatus.RUNNING,
            offset=batch.offset,
            next_offset=batch.next_offset,
            tokens=batch.tokens,
            ts=batch.ts,
            done=done,
            error=end.error if done and end else None,
            usage=end.usage if done and end else None,
        )

    @contextlib.asynccontextmanager
    async def follow(self, job_id: str, offset: int) -> AsyncIterator[Follower]:
        """A follower of ``job_id`` from ``offset``; raises ``JobNotFound`` before yielding."""
        self.followers += 1
        try:
            async with open_follower(
                self.hub, self.store, job_id, offset, self.follow_options
            ) as follower:
                yield follower
        finally:
            self.followers -= 1

    def drain(self) -> None:
        """A shutdown began: live streams end, held polls answer; clients resume elsewhere."""
        self.hub.drain()

    async def cancel(self, job_id: str) -> None:
        await self.store.cancel(job_id)
