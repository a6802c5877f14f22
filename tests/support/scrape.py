"""Reading ``/metrics`` in tests: samples by name and labels, and waiting for them to move
(a process's delivery tallies reach its series within ``observe.metrics.FLUSH_SECONDS``, and
every process's by the next scrape after that)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name, frozenset(s.labels.items())] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when absent (a series not yet recorded)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(c: httpx.AsyncClient) -> Samples:
    r = await c.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


async def until(
    c: httpx.AsyncClient, holds: Callable[[Samples], bool], within: float = 15.0
) -> Samples:
    """Scrape until ``holds`` is true of the samples; fails with the last scrape after
    ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        samples = await scrape(c)
        if holds(samples):
            return samples
        if time.monotonic() > deadline:
            got = {k: v for k, v in samples.items() if k[0].startswith("reviewstream_")}
            raise AssertionError(f"/metrics never matched; last scrape: {got}")
        await asyncio.sleep(0.2)
