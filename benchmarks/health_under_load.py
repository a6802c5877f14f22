"""``/metrics``, ``/healthz`` and ``/readyz`` latency while the server delivers to many
followers, and what that delivery costs in server CPU per delivered event.

Starts a private redis-server and ``reviewstream serve`` (simulated model at ``--rate`` tokens/s,
jobs long enough to outlast the run), opens ``--followers`` SSE streams over ``--jobs`` jobs
with the benchmark's lean client (``reviewstream.bench.conn``), and over ``--seconds`` samples
each probe path every 100 ms on a keep-alive connection of its own (p50/p99/max, errors),
counts the SSE events received and reads the server's CPU (``/proc``: the API process and its
worker process). Compare trees with ``PYTHONPATH`` (the server runs what ``reviewstream``
Python imports), interleaving runs:

    PYTHONPATH=src python benchmarks/health_under_load.py --followers 1000 --seconds 20
    PYTHONPATH=src python benchmarks/health_under_load.py --probes /healthz   # delivery's cost
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from harness import run, say

from reviewstream.bench.conn import Endpoint, HttpConnection
from reviewstream.bench.plan import ServerConfig
from reviewstream.bench.runner import job_body
from reviewstream.bench.server import (
    raise_open_files_limit,
    server_cpu_seconds,
    started_system,
    worker_cpu_seconds,
)
from reviewstream.bench.stats import quantile

PROBES = ("/metrics", "/healthz", "/readyz")
PROBE_EVERY = 0.1


@dataclass
class Probe:
    path: str
    ms: list[float] = field(default_factory=list)
    errors: int = 0

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.ms)
        return {
            "samples": len(ordered),
            "errors": self.errors,
            "p50": round(quantile(ordered, 0.5), 2) if ordered else None,
            "p99": round(quantile(ordered, 0.99), 2) if ordered else None,
            "max": round(ordered[-1], 2) if ordered else None,
        }


async def sample(endpoint: Endpoint, probe: Probe, stop: asyncio.Event) -> None:
    conn = await HttpConnection.open(endpoint)
    try:
        next_at = time.perf_counter()
        while not stop.is_set():
            started = time.perf_counter()
            try:
                if not conn.is_open:
                    conn = await HttpConnection.open(endpoint)
                response = conn.request("GET", probe.path)
                await response.done
                if response.status != 200:
                    raise ConnectionError(f"{probe.path} answered {response.status}")
                probe.ms.append((time.perf_counter() - started) * 1000)
            except (OSError, ConnectionError):
                probe.errors += 1
            next_at = max(next_at + PROBE_EVERY, time.perf_counter())
            await asyncio.sleep(next_at - time.perf_counter())
    finally:
        conn.close()


async def open_stream(endpoint: Endpoint, job_id: str, events: list[int]) -> HttpConnection:
    conn = await HttpConnection.open(endpoint)

    def on_body(data: bytes, now: float) -> None:
        events[0] += data.count(b"event: token")

    response = conn.request(
        "GET", f"/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}, on_body=on_body
    )
    if await response.headers != 200:
        conn.close()
        raise ConnectionError("SSE refused")
    return conn


def api_cpu_seconds(pid: int | None) -> float | None:
    """CPU seconds of the server's API process(es): all of it but its worker process."""
    if pid is None:
        return None
    total = server_cpu_seconds(pid)
    return None if total is None else total - (worker_cpu_seconds(pid) or 0.0)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    config = ServerConfig(rate=args.rate, coalesce_ms=0, first_token_ms=100)
    events = [0]
    conns: list[HttpConnection] = []
    async with started_system(config, graceful_seconds=1) as system:
        endpoint = Endpoint.from_url(system.base_url)
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
            jobs = []
            for _ in range(args.jobs):
                r = await client.post("/jobs", json=job_body(args.words))
                r.raise_for_status()
                jobs.append(str(r.json()["id"]))
        try:
            for start in range(0, args.followers, 200):
                opened = await asyncio.gather(
                    *(open_stream(endpoint, jobs[i % len(jobs)], events)
                      for i in range(start, min(start + 200, args.followers)))
                )  # fmt: skip
                conns += opened
            say(f"{len(conns)} SSE followers on {len(jobs)} jobs; settling {args.settle:g} s")
            await asyncio.sleep(args.settle)
            probes = [Probe(path) for path in args.probes]
            stop = asyncio.Event()
            cpu_before = api_cpu_seconds(system.server_pid)
            events_before, started = events[0], time.monotonic()
            samplers = [asyncio.create_task(sample(endpoint, p, stop)) for p in probes]
            await asyncio.sleep(args.seconds)
            stop.set()
            await asyncio.gather(*samplers)
            seconds = time.monotonic() - started
            delivered = events[0] - events_before
            cpu_after = api_cpu_seconds(system.server_pid)
            still_open = sum(1 for c in conns if c.is_open)
        finally:
            for conn in conns:
                conn.close()
    api_cpu = cpu_after - cpu_before if cpu_after is not None and cpu_before is not None else None
    return {
        "followers": len(conns),
        "followers_still_open": still_open,
        "jobs": args.jobs,
        "rate": args.rate,
        "seconds": round(seconds, 2),
        "events_per_second": round(delivered / seconds, 1),
        "api_cpu_percent": round(100 * api_cpu / seconds, 1) if api_cpu is not None else None,
        "api_cpu_us_per_event": round(1e6 * api_cpu / delivered, 2)
        if api_cpu is not None and delivered
        else None,
        "probes_ms": {p.path: p.summary() for p in probes},
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"{result['followers']} SSE followers ({result['followers_still_open']} still open),"
        f" {result['jobs']} jobs at {result['rate']:g} tok/s, {result['seconds']:g} s:"
        f" {result['events_per_second']:g} events/s, API CPU {result['api_cpu_percent']} %"
        f" ({result['api_cpu_us_per_event']} us/event)",
        f"{'path':<10}{'samples':>8}{'errors':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}",
    ]
    for path, p in result["probes_ms"].items():
        lines.append(
            f"{path:<10}{p['samples']:>8}{p['errors']:>7}{p['p50'] or 0:>9.2f}"
            f"{p['p99'] or 0:>9.2f}{p['max'] or 0:>9.2f}"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    raise_open_files_limit()
    result = await measure(args)
    print(report(result))
    if args.json:
        with open(args.json, "w") as f:  # noqa: ASYNC230 - once, at the end
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--followers", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--rate", type=float, default=20.0, help="tokens/s of each job")
    parser.add_argument("--words", type=int, default=1500, help="each job's length")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument(
        "--probes", nargs="+", default=list(PROBES),
        help="paths sampled every 100 ms (the CPU per event counts their cost too: to compare"
        " what delivery costs, probe /healthz alone)",
    )  # fmt: skip
    parser.add_argument("--json", help="also write the result here")
    run(main(parser.parse_args()))
