"""Prometheus metrics: every process's series (``observe``), and this process's gauges."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ...errors import StoreError
from ...observe.exposition import CONTENT_TYPE, Scrapes, ScrapeTime, render
from ...observe.metrics import metrics as process_metrics
from ..deps import Service

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
async def metrics(service: Service, request: Request) -> Response:
    """The `reviewstream_*` series (README, Observe); gauges of this process; its pid."""
    scrapes: Scrapes = request.app.state.scrapes
    started = time.monotonic()
    body = scrapes.fresh(started)
    if body is not None:  # rendered less than a second ago
        return Response(body, media_type=CONTENT_TYPE)
    worker = service.worker
    try:
        depths: list[int] | None = await service.store.queue.lengths()
    except StoreError:
        depths = None  # Redis down: the scrape still answers, without the queue's depth
    now = ScrapeTime(
        followers=service.followers,
        feeds=service.hub.feeds,
        running_jobs=worker.running if worker is not None else 0,
        queue_depths=depths,
    )
    process_metrics().flush()
    # On the loop: a file per process, read in a few milliseconds. In a thread it would wait
    # for the GIL behind the busy loop it was meant to spare (benchmarks/README.md).
    return Response(scrapes.keep(render(now), started), media_type=CONTENT_TYPE)
