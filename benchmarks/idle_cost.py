"""What idle SSE streams cost: Redis commands/s, server CPU and /healthz latency, nothing streaming.

Starts a private redis-server and ``reviewstream serve`` (simulated model whose first token
comes after ten minutes, so every job is running and quiet), opens ``--streams`` SSE streams
spread over ``--jobs`` jobs with the benchmark's lean client (``reviewstream.bench.conn``), and
measures over ``--seconds``: Redis commands/s (``INFO commandstats`` deltas, the benchmark's own
commands left out), the server's CPU (``/proc``), and ``/healthz`` answered on one keep-alive
connection sampled every 50 ms (p50/p95/p99/max). The same is measured first with nobody
following (``--baseline-seconds``), which is what the jobs themselves cost (leases, heartbeats).

    python benchmarks/idle_cost.py --streams 3000 --jobs 10 --seconds 30

It runs whatever ``reviewstream`` Python imports (``PYTHONPATH=some/src`` to compare trees).
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
    System,
    raise_open_files_limit,
    server_cpu_seconds,
    started_system,
)
from reviewstream.bench.stats import quantile

NEVER_MS = 600_000.0  # the simulated model's time to first token: longer than any run
HEALTH_EVERY = 0.05


@dataclass
class Window:
    """What the server and Redis did while nobody (or every stream) sat idle."""

    seconds: float = 0.0
    commands: dict[str, int] = field(default_factory=dict)
    server_cpu: float | None = None
    healthz_ms: list[float] = field(default_factory=list)
    healthz_errors: int = 0

    @property
    def commands_per_second(self) -> float:
        return sum(self.commands.values()) / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.healthz_ms)
        top = sorted(self.commands.items(), key=lambda kv: -kv[1])
        return {
            "seconds": round(self.seconds, 2),
            "redis_commands_per_second": round(self.commands_per_second, 1),
            "commands_per_second": {k: round(v / self.seconds, 1) for k, v in top if v},
            "server_cpu_percent": (
                round(100 * self.server_cpu / self.seconds, 1)
                if self.server_cpu is not None
                else None
            ),
            "healthz_samples": len(ordered),
            "healthz_errors": self.healthz_errors,
            "healthz_ms": {
                "p50": round(quantile(ordered, 0.5), 2),
                "p95": round(quantile(ordered, 0.95), 2),
                "p99": round(quantile(ordered, 0.99), 2),
                "max": round(ordered[-1], 2) if ordered else None,
            },
        }


async def sample_healthz(endpoint: Endpoint, window: Window, stop: asyncio.Event) -> None:
    """GET /healthz every ``HEALTH_EVERY`` seconds on one keep-alive connection."""
    conn = await HttpConnection.open(endpoint)
    try:
        next_at = time.perf_counter()
        while not stop.is_set():
            started = time.perf_counter()
            try:
                if not conn.is_open:
                    conn = await HttpConnection.open(endpoint)
                response = conn.request("GET", "/healthz")
                await response.done
                if response.status != 200:
                    raise ConnectionError(f"/healthz answered {response.status}")
                window.healthz_ms.append((time.perf_counter() - started) * 1000)
            except (OSError, ConnectionError):
                window.healthz_errors += 1
            next_at = max(next_at + HEALTH_EVERY, time.perf_counter())
            await asyncio.sleep(next_at - time.perf_counter())
    finally:
        conn.close()


async def measure(system: System, endpoint: Endpoint, seconds: float) -> Window:
    assert system.redis is not None and system.server_pid is not None
    window = Window()
    stop = asyncio.Event()
    before = await system.redis.commandstats()
    cpu_before = server_cpu_seconds(system.server_pid)
    started = time.monotonic()
    sampler = asyncio.create_task(sample_healthz(endpoint, window, stop))
    await asyncio.sleep(seconds)
    stop.set()
    await sampler
    window.seconds = time.monotonic() - started
    cpu_after = server_cpu_seconds(system.server_pid)
    after = await system.redis.commandstats()
    window.commands = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k)}
    if cpu_before is not None and cpu_after is not None:
        window.server_cpu = cpu_after - cpu_before
    return window


async def open_stream(endpoint: Endpoint, job_id: str, events: list[int]) -> HttpConnection:
    conn = await HttpConnection.open(endpoint)

    def on_body(data: bytes, now: float) -> None:
        if b"event:" in data:
            events.append(1)

    response = conn.request(
        "GET", f"/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}, on_body=on_body
    )
    status = await response.headers
    if status != 200:
        conn.close()
        raise ConnectionError(f"SSE answered {status}")
    return conn


async def running_jobs(base_url: str, n: int) -> list[str]:
    """``n`` jobs, once a worker runs each (and waits ten minutes for its first token)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        jobs = []
        for _ in range(n):
            response = await client.post("/jobs", json=job_body(100))
            response.raise_for_status()
            jobs.append(str(response.json()["id"]))
        deadline = time.monotonic() + 30
        for job_id in jobs:
            while (await client.get(f"/jobs/{job_id}")).json()["status"] != "running":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"job {job_id} never started running")
                await asyncio.sleep(0.05)
    return jobs


async def measure_idle(args: argparse.Namespace) -> dict[str, Any]:
    """The baseline window, then the streams opened and their idle window."""
    config = ServerConfig(rate=20, coalesce_ms=0, first_token_ms=NEVER_MS)
    extra = {"REVIEWSTREAM_RESYNC_SECONDS": f"{args.resync_seconds:g}"}
    conns: list[HttpConnection] = []
    events: list[int] = []
    async with started_system(config, graceful_seconds=1, extra_env=extra) as system:
        endpoint = Endpoint.from_url(system.base_url)
        jobs = await running_jobs(system.base_url, args.jobs)
        say(f"{args.jobs} quiet running jobs; baseline for {args.baseline_seconds:g} s")
        baseline = await measure(system, endpoint, args.baseline_seconds)
        started = time.monotonic()
        errors = 0
        try:
            for start in range(0, args.streams, 200):
                opened = await asyncio.gather(
                    *(
                        open_stream(endpoint, jobs[i % args.jobs], events)
                        for i in range(start, min(start + 200, args.streams))
                    ),
                    return_exceptions=True,
                )
                conns += [c for c in opened if isinstance(c, HttpConnection)]
                errors += sum(1 for c in opened if not isinstance(c, HttpConnection))
            connect_seconds = time.monotonic() - started
            say(f"{len(conns)} SSE streams open in {connect_seconds:.1f} s ({errors} errors)")
            await asyncio.sleep(args.settle_seconds)
            say(f"measuring {args.seconds:g} s")
            idle = await measure(system, endpoint, args.seconds)
            still_open = sum(1 for c in conns if c.is_open)
        finally:
            for conn in conns:
                conn.close()
    return {
        "streams": len(conns),
        "stream_errors": errors,
        "streams_still_open": still_open,
        "events_received": len(events),
        "jobs": args.jobs,
        "resync_seconds": args.resync_seconds,
        "connect_seconds": round(connect_seconds, 1),
        "baseline": baseline.summary(),
        "idle": idle.summary(),
    }


def report(result: dict[str, Any]) -> str:
    rows = []
    for name in ("baseline", "idle"):
        w = result[name]
        h = w["healthz_ms"]
        streams = 0 if name == "baseline" else result["streams"]
        rows.append(
            f"{name:<9} {streams:>7} {w['redis_commands_per_second']:>12.1f}"
            f" {w['server_cpu_percent'] or 0:>8.1f} {h['p50']:>8.2f} {h['p95']:>8.2f}"
            f" {h['p99']:>8.2f} {h['max'] or 0:>8.2f}"
        )
    head = (
        f"{'window':<9} {'streams':>7} {'redis cmd/s':>12} {'cpu %':>8} {'hz p50':>8}"
        f" {'hz p95':>8} {'hz p99':>8} {'hz max':>8}"
    )
    busiest = list(result["idle"]["commands_per_second"].items())[:6]
    top = ", ".join(f"{k} {v:g}/s" for k, v in busiest)
    return "\n".join(
        [head, *rows, f"idle commands: {top or 'none'}", f"events received: "
         f"{result['events_received']}, streams still open: {result['streams_still_open']}"]
    )  # fmt: skip


async def main(args: argparse.Namespace) -> int:
    raise_open_files_limit()
    result = await measure_idle(args)
    print(report(result))
    if args.json:
        with open(args.json, "w") as f:  # noqa: ASYNC230 - once, at the end
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=3000)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30.0, help="the idle window measured")
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    parser.add_argument("--settle-seconds", type=float, default=6.0, help="after the last connect")
    parser.add_argument("--resync-seconds", type=float, default=5.0)
    parser.add_argument("--json", help="also write the result here")
    run(main(parser.parse_args()))
