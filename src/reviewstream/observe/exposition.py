"""What ``/metrics`` answers: every process's series, and what the answering process and Redis
say at scrape time.

**Multiprocess mode, a directory per run.** ``reviewstream serve`` gives its processes one
directory of its own (``run_directory``, in ``PROMETHEUS_MULTIPROC_DIR``, made before
prometheus_client is imported and removed when ``serve`` exits): every API process of
``--processes N`` and the worker child write their series there, and a scrape of any API
process reads them all (``MultiProcessCollector``). Behind one port a scraper cannot choose the
process it reaches, and the worker child has no port at all, so scraping each process on its
own would see a different process's counters at every scrape. An operator who sets
``PROMETHEUS_MULTIPROC_DIR`` keeps it (and cleans it between runs); an app served in-process
without it (tests, ``create_app`` elsewhere) keeps its series in memory.

Open connections are a ``livesum`` gauge: a process that died (a replaced API process) stops
counting at the next scrape, which drops the gauge files of process ids no longer alive.

**At scrape time** (``ScrapeTime``): the queue depth per shard (one ``XLEN`` per shard, read
by the route before rendering) and the answering process's own gauges, kept from before this
module: ``reviewstream_followers``, ``reviewstream_feeds``,
``reviewstream_worker_running_jobs`` and ``reviewstream_process_info{pid}``.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
    start_http_server,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from .metrics import metrics
from .rundir import MULTIPROC_ENV

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LIVE_GAUGE = re.compile(r"gauge_live(?:sum|all)_(\d+)\.db$")


@dataclass(frozen=True, slots=True)
class ScrapeTime:
    """What the answering process and Redis say now."""

    followers: int
    feeds: int
    running_jobs: int
    queue_depths: Sequence[int] | None  # per shard; None when Redis did not answer

    def collect(self) -> Iterable[Metric]:
        yield _gauge("reviewstream_followers", "Live followers (long poll, SSE, WebSocket).",
                     self.followers)  # fmt: skip
        yield _gauge("reviewstream_feeds", "Jobs this process is subscribed to.", self.feeds)
        yield _gauge("reviewstream_worker_running_jobs", "Jobs the in-process worker is running.",
                     self.running_jobs)  # fmt: skip
        info = GaugeMetricFamily(
            "reviewstream_process_info", "The process these gauges are of.", labels=["pid"]
        )
        info.add_metric([str(os.getpid())], 1)
        yield info
        if self.queue_depths is not None:
            depth = GaugeMetricFamily(
                "reviewstream_queue_depth",
                "Entries in each queue shard: queued jobs, and claims not yet settled.",
                labels=["shard"],
            )
            for shard, n in enumerate(self.queue_depths):
                depth.add_metric([str(shard)], n)
            yield depth


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class _Collectors(Collector):
    def __init__(self, *sources: Collector | ScrapeTime) -> None:
        self._sources = sources

    def collect(self) -> Iterable[Metric]:
        for source in self._sources:
            yield from source.collect()


def render(now: ScrapeTime) -> bytes:
    """The exposition: every process's series and ``now`` (after ``metrics().flush()``, so
    that this process's are current). Reads a file per process in multiprocess mode."""
    m = metrics()
    registry = CollectorRegistry(auto_describe=False)
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        forget_dead(path)
        registry.register(_Collectors(_multiprocess(path), now))
    else:
        registry.register(_Collectors(m.registry, now))
    return generate_latest(registry)


def serve_standalone(port: int) -> bool:
    """Serve this process's series on ``port`` (a thread of prometheus_client's), unless it
    writes them to a multiprocess directory that an API process's ``/metrics`` reads."""
    if port == 0 or os.environ.get(MULTIPROC_ENV):
        return False
    start_http_server(port, registry=metrics().registry)
    return True


def _multiprocess(path: str) -> MultiProcessCollector:
    return MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]  # unregistered


def forget_dead(path: str) -> None:
    """Drop the live gauges of processes that are gone (a replaced API process, a restarted
    worker), so that their connections stop counting."""
    for file in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = _LIVE_GAUGE.search(file)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, another user's


class Scrapes:
    """The last exposition, answered again to scrapes within ``max_age`` seconds of it.

    Rendering reads every process's files on the event loop that delivers tokens; a scraper
    (or several, or a dashboard's refresh) asking more often than ``max_age`` gets the same
    text instead of stalling delivery again. Prometheus scrapes every 15 s or so: the figures
    it reads are never older than ``max_age``.
    """

    def __init__(self, max_age: float = 1.0) -> None:
        self.max_age = max_age
        self._body = b""
        self._at = float("-inf")

    def fresh(self, now: float) -> bytes | None:
        return self._body if now - self._at < self.max_age else None

    def keep(self, body: bytes, now: float) -> bytes:
        self._body, self._at = body, now
        return body
