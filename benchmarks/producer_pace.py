"""Does API load slow the model's output? A job's pace with and without followers, per placement
of ``serve``'s workers (``REVIEWSTREAM_SERVE_WORKERS``: process, thread, inline).

For each placement the script starts a private redis-server and ``reviewstream serve`` (the
simulated model at ``--rate`` tokens/s, ``--first-token-ms`` to its first token), then runs,
``--runs`` times and interleaved, the same ``--jobs`` jobs of ``--length-words`` words:

- **unloaded**: nobody follows them (their ends are heard on a Redis pattern subscription,
  free for the server);
- **loaded**: each job followed by ``--per-job`` followers of each ``--mode`` (``long_poll``
  asks again as soon as an answer arrives; ``sse`` streams), with the benchmark's lean clients
  (``reviewstream.bench.conn``/``followers``) — ``--followers`` in all, per mode.

A job's **pace** is read from Redis afterwards: its tokens' append times (``TIME`` inside the
append script, the server's one clock), first to last token, in seconds, and as tokens/s; the
gaps between consecutive tokens give p50/p99. Per run, the median job; per placement, the median
over runs. **ratio** = loaded pace / unloaded pace (seconds): 1.00 means API load did not slow
generation at all; the target is <= 1.10. The simulated model schedules each token at a fixed
time from its first, so a producer that falls behind catches up when it can: the pace grows
only when the producer's loop stays busier than the token interval allows, and the p99 gap
shows the stalls on the way. A first discarded warm-up run per server. The clients run on the
same machine as the server: on a small box they compete for its cores, which is the point.

    python benchmarks/producer_pace.py --followers 250 --mode long_poll
    python benchmarks/producer_pace.py --followers 250 --mode long_poll,sse --runs 5 --json out.json

It runs whatever ``reviewstream`` Python imports (``PYTHONPATH=some/src`` to compare trees).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from harness import command, run, say

from reviewstream.bench.conn import Endpoint
from reviewstream.bench.followers import FollowOptions, JobHandle, Trace, follow
from reviewstream.bench.plan import ServerConfig
from reviewstream.bench.runner import TOKENS_PER_WORD, EndWatcher, job_body
from reviewstream.bench.server import (
    System,
    cpu_seconds,
    descendants_of,
    raise_open_files_limit,
    started_system,
)
from reviewstream.bench.stats import quantile
from reviewstream.keys import Keys

VARIANTS = ("process", "thread", "inline")
MODES = ("long_poll", "sse", "websocket", "short_poll")


@dataclass
class Run:
    """One run: each job's token append times, and what the followers and server did."""

    kind: str  # "unloaded" or the loading modes, e.g. "long_poll"
    times: list[list[float]] = field(default_factory=list)
    follower_errors: int = 0
    followers: int = 0
    server_cpu_percent: float | None = None
    worker_cpu_percent: float | None = None
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def durations(self) -> list[float]:
        return sorted(t[-1] - t[0] for t in self.times if len(t) > 1)

    @property
    def pace_seconds(self) -> float:
        """The median job's first-to-last-token time."""
        return statistics.median(self.durations) if self.durations else float("nan")

    @property
    def slowest_seconds(self) -> float:
        return self.durations[-1] if self.durations else float("nan")

    @property
    def tokens_per_second(self) -> float:
        rates = sorted((len(t) - 1) / (t[-1] - t[0]) for t in self.times if len(t) > 1)
        return statistics.median(rates) if rates else float("nan")

    @property
    def gaps_ms(self) -> list[float]:
        return sorted((b - a) * 1000 for t in self.times for a, b in zip(t, t[1:], strict=False))


def _cpu(pids: list[int]) -> float | None:
    values = [cpu_seconds(pid) for pid in pids]
    return sum(v for v in values if v is not None) if pids else None


async def one_run(system: System, args: argparse.Namespace, modes: tuple[str, ...]) -> Run:
    """Create ``args.jobs`` jobs, follow each with ``args.per_job`` followers per mode (none
    when ``modes`` is empty), wait for every end, then read each job's append times."""
    run = Run("+".join(modes) or "unloaded")
    endpoint = Endpoint.from_url(system.base_url)
    assert system.redis is not None and system.redis.client is not None
    redis = system.redis.client
    keys = Keys()
    body = job_body(args.length_words)
    tasks: list[asyncio.Task[None]] = []
    traces: list[Trace] = []
    expected = args.first_token_ms / 1000 + args.length_words * TOKENS_PER_WORD / args.rate
    deadline = 15 * expected + 30  # a starved producer is slow, not lost: measure it
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    workers = descendants_of(system.server_pid) if system.server_pid else []
    async with (
        httpx.AsyncClient(base_url=system.base_url, timeout=30, limits=limits) as client,
        EndWatcher(system) as ends,
    ):
        cpu_before = cpu_seconds(system.server_pid) if system.server_pid else None
        worker_before = _cpu(workers)
        started = time.monotonic()
        semaphore = asyncio.Semaphore(16)

        async def start(index: int) -> str | None:
            async with semaphore:
                response = await client.post("/jobs", json=body)
            if response.status_code != 202:
                run.errors.append(f"POST /jobs answered {response.status_code}")
                return None
            job = JobHandle(str(response.json()["id"]), time.time())
            for mode in modes:
                for k in range(args.per_job):
                    trace = Trace(mode, job)
                    traces.append(trace)
                    options = FollowOptions(seed=index * 101 + k)
                    tasks.append(asyncio.create_task(follow(mode, endpoint, trace, options)))
            return job.id

        created = await asyncio.gather(*(start(i) for i in range(args.jobs)))
        job_ids = [j for j in created if j is not None]
        if not await ends.wait_for(set(job_ids), deadline):
            run.errors.append("jobs did not end before the deadline")
            for job_id in set(job_ids) - ends.ended:  # the next run starts on a quiet server
                await client.delete(f"/jobs/{job_id}")
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=30)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        run.seconds = time.monotonic() - started
        cpu_after = cpu_seconds(system.server_pid) if system.server_pid else None
        worker_after = _cpu(workers)
        if cpu_before is not None and cpu_after is not None:
            run.server_cpu_percent = 100 * (cpu_after - cpu_before) / run.seconds
        if worker_before is not None and worker_after is not None:
            run.worker_cpu_percent = 100 * (worker_after - worker_before) / run.seconds
    for job_id in job_ids:
        stamps = await redis.lrange(keys.times(job_id), 0, -1)
        run.times.append([float(s) for s in stamps])
    run.followers = len(traces)
    run.follower_errors = sum(len(t.errors) for t in traces)
    return run


@dataclass
class Variant:
    name: str
    unloaded: list[Run] = field(default_factory=list)
    loaded: list[Run] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def side(runs: list[Run]) -> dict[str, Any]:
            gaps = sorted(g for r in runs for g in r.gaps_ms)

            def median(values: list[float | None]) -> float | None:
                present = [v for v in values if v is not None]
                return round(statistics.median(present), 3) if present else None

            return {
                "pace_seconds": median([r.pace_seconds for r in runs]),
                "slowest_job_seconds": median([r.slowest_seconds for r in runs]),
                "tokens_per_second": median([r.tokens_per_second for r in runs]),
                "gap_ms_p50": round(quantile(gaps, 0.5), 2),
                "gap_ms_p99": round(quantile(gaps, 0.99), 2),
                "server_cpu_percent": median([r.server_cpu_percent for r in runs]),
                "worker_process_cpu_percent": median([r.worker_cpu_percent for r in runs]),
                "runs_pace_seconds": [round(r.pace_seconds, 3) for r in runs],
                "follower_errors": sum(r.follower_errors for r in runs),
                "errors": [e for r in runs for e in r.errors],
            }

        unloaded, loaded = side(self.unloaded), side(self.loaded)
        ratio = (
            round(loaded["pace_seconds"] / unloaded["pace_seconds"], 3)
            if loaded["pace_seconds"] and unloaded["pace_seconds"]
            else None
        )
        return {"variant": self.name, "ratio": ratio, "unloaded": unloaded, "loaded": loaded}


async def measure(variant: str, args: argparse.Namespace, modes: tuple[str, ...]) -> Variant:
    config = ServerConfig(rate=args.rate, coalesce_ms=0, first_token_ms=args.first_token_ms)
    result = Variant(variant)
    env = {"REVIEWSTREAM_SERVE_WORKERS": variant, "REVIEWSTREAM_MAX_OPEN_CONNECTIONS": "100000"}
    async with started_system(config, extra_env=env, worker_concurrency=max(256, args.jobs)) as sy:
        say(f"[{variant}] server up; warm-up run")
        await one_run(sy, args, modes)
        for i in range(args.runs):
            for loaded in (False, True):
                run = await one_run(sy, args, modes if loaded else ())
                (result.loaded if loaded else result.unloaded).append(run)
                say(
                    f"[{variant}] run {i + 1}/{args.runs} {run.kind:>10}: median job "
                    f"{run.pace_seconds:.3f} s ({run.tokens_per_second:.2f} tok/s), slowest "
                    f"{run.slowest_seconds:.3f} s, gap p99 {quantile(run.gaps_ms, 0.99):.1f} ms, "
                    f"API CPU {run.server_cpu_percent or 0:.0f} %"
                    + (f", {run.follower_errors} follower errors" if run.follower_errors else "")
                    + (f", ERRORS {run.errors}" if run.errors else "")
                )
    return result


def table(results: list[dict[str, Any]], args: argparse.Namespace, modes: str) -> str:
    n = args.jobs * args.per_job
    lines = [
        f"Producer pace: {args.jobs} jobs x {args.length_words} words at {args.rate:g} tok/s; "
        f"loaded = {args.per_job} {modes} followers per job ({n} per mode); "
        f"median of {args.runs} runs each",
        "",
        f"{'workers in':<10} {'unloaded s':>10} {'loaded s':>9} {'ratio':>6} {'tok/s u/l':>13} "
        f"{'gap p50 u/l ms':>15} {'gap p99 u/l ms':>15} {'slowest u/l s':>14} {'API CPU':>8}",
    ]

    def pair(u: float | None, lo: float | None, digits: int) -> str:
        return f"{u or 0:.{digits}f}/{lo or 0:.{digits}f}"

    for r in results:
        u, lo = r["unloaded"], r["loaded"]
        lines.append(
            f"{r['variant']:<10} {u['pace_seconds']:>10.3f} {lo['pace_seconds']:>9.3f} "
            f"{r['ratio'] or float('nan'):>6.3f} "
            f"{pair(u['tokens_per_second'], lo['tokens_per_second'], 2):>13} "
            f"{pair(u['gap_ms_p50'], lo['gap_ms_p50'], 1):>15} "
            f"{pair(u['gap_ms_p99'], lo['gap_ms_p99'], 1):>15} "
            f"{pair(u['slowest_job_seconds'], lo['slowest_job_seconds'], 2):>14} "
            f"{lo['server_cpu_percent'] or 0:>7.0f}%"
        )
        errors = lo["follower_errors"] + len(lo["errors"]) + len(u["errors"])
        if errors:
            lines.append(f"{'':<10} !! {errors} errors: {(u['errors'] + lo['errors'])[:3]}")
    lines += [
        "",
        "ratio = loaded / unloaded median first-to-last-token time (target <= 1.10); "
        "u/l = unloaded/loaded; gaps between consecutive tokens of a job (Redis append times); "
        "API CPU = the serve process under load (a worker thread's CPU included, a worker "
        "process's not); errors: jobs that had not ended within 15x their unloaded time "
        "(then cancelled) or followers that failed.",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--followers", type=int, default=250, help="followers per mode (default 250)")
    p.add_argument("--mode", default="long_poll", help="comma-separated: " + ",".join(MODES))
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated placements")
    p.add_argument("--per-job", type=int, default=10, help="followers per job per mode (10)")
    p.add_argument("--runs", type=int, default=3, help="runs per placement and load (3)")
    p.add_argument("--rate", type=float, default=20.0, help="simulated tokens/s (20)")
    p.add_argument("--length-words", type=int, default=100, help="job size, >= 50 (100 words)")
    p.add_argument("--first-token-ms", type=float, default=500.0, help="simulated TTFT (500)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = p.parse_args(argv)
    args.jobs = max(1, args.followers // args.per_job)
    return args


async def main(args: argparse.Namespace) -> int:
    modes = tuple(m.strip() for m in args.mode.split(",") if m.strip())
    unknown = set(modes) - set(MODES)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown or not modes or set(variants) - set(VARIANTS):
        say(f"unknown mode or variant: {sorted(unknown) or variants}")
        return 2
    raise_open_files_limit()
    say(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    results = [(await measure(v, args, modes)).summary() for v in variants]
    say(f"load average after: {os.getloadavg()[0]:.2f}")
    print(table(results, args, "+".join(modes)))
    if args.json is not None:
        args.json.write_text(json.dumps({"command": command(), "results": results}, indent=2))
    failed = any(r["loaded"]["errors"] or r["unloaded"]["errors"] for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    run(main(parse_args()))
