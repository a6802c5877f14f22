"""Prometheus metrics of this process, in the text exposition format."""

from __future__ import annotations

import os

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from ..deps import Service

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(service: Service) -> PlainTextResponse:
    """Gauges of this process: followers, subscribed jobs, running jobs; its pid."""
    worker = service.worker
    gauges = {
        "reviewstream_followers": (
            "Live followers (long poll, SSE, WebSocket).",
            service.followers,
        ),
        "reviewstream_feeds": ("Jobs this process is subscribed to.", service.hub.feeds),
        "reviewstream_worker_running_jobs": (
            "Jobs the in-process worker is running.",
            worker.running if worker is not None else 0,
        ),
    }
    lines = []
    for name, (help_text, value) in gauges.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
    # Which process answered: behind one port (`serve --processes N`) a scrape reaches any one.
    lines += [
        "# HELP reviewstream_process_info The process these gauges are of.",
        "# TYPE reviewstream_process_info gauge",
        f'reviewstream_process_info{{pid="{os.getpid()}"}} 1',
    ]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
