"""The floor under a worker's group commit at a job's pace: what a flush costs the worker, and
what an APPEND call costs Redis, measured apart from any producer.

At 20 tokens/s per job a flush carries about one token per job (a job has a token every 50 ms,
a flush goes every few ms), so each token costs a share of a round trip and one APPEND call of
its own. On a private redis-server (a unix socket, as the embedded default), with ``--jobs`` jobs
created in the store and marked running (as a claim leaves them):

- **worker, per flush**: this process's CPU (``time.process_time``) per
  ``JobStore.append_batch`` of N calls of one token each, from the pool (a checkout per flush)
  and on a ``Lane`` (the group commit's held connection); the cost per call and the fixed cost
  of a round trip follow from the smallest and the largest N;
- **Redis, per call**: redis-server's CPU (``/proc``) per APPEND call, and ``INFO
  commandstats``' time inside EVALSHA per call, for flushes of ``--calls`` calls sent
  ``--gap-ms`` apart (a worker's pace) and back to back (a Redis kept busy).

The kinds run interleaved, round by round; the figures are medians over ``--rounds``.

    python benchmarks/append_floor.py --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import command, machine, run, say

from reviewstream.bench.server import RedisProcess, cpu_seconds
from reviewstream.keys import Keys
from reviewstream.models import ReviewRequest
from reviewstream.store import Append, Lane, Store

REQUEST = ReviewRequest(
    employee_name="Ada Lovelace",
    employee_review_points="Led the payments migration; mentors two juniors; ships on time.",
    model="sim-default",
)
OWNER = "append-floor"
SIZES = (1, 4, 16)


class Jobs:
    """Running jobs and where each one's next token goes."""

    def __init__(self, store: Store, job_ids: list[str]) -> None:
        self.store = store
        self.ids = job_ids
        self.offsets = dict.fromkeys(job_ids, 0)
        self.turn = 0

    def batch(self, calls: int) -> list[Append]:
        """One call (one token) for each of the next ``calls`` jobs, round robin."""
        batch = []
        for _ in range(calls):
            job_id = self.ids[self.turn % len(self.ids)]
            self.turn += 1
            stamp = f"{time.time():.6f}"
            batch.append(Append(job_id, OWNER, self.offsets[job_id], [" word"], [stamp]))
            self.offsets[job_id] += 1
        return batch

    async def flush(self, calls: int, lane: Lane | None) -> None:
        replies = await self.store.jobs.append_batch(self.batch(calls), lane=lane)
        if not all(isinstance(r, int) and r > 0 for r in replies):
            raise RuntimeError(f"an append was refused: {replies[:3]}")


async def worker_flush_us(jobs: Jobs, calls: int, lane: Lane | None, flushes: int) -> float:
    start = time.process_time()
    for _ in range(flushes):
        await jobs.flush(calls, lane)
    return (time.process_time() - start) / flushes * 1e6


async def redis_call_us(
    server: RedisProcess, jobs: Jobs, calls: int, gap: float, flushes: int
) -> tuple[float, float]:
    """redis-server's CPU per call and EVALSHA's own time per call (µs)."""
    client = server.client
    assert client is not None and server.pid is not None
    await client.config_resetstat()
    before = cpu_seconds(server.pid)
    for _ in range(flushes):
        await jobs.flush(calls, None)
        if gap:
            await asyncio.sleep(gap)
    after = cpu_seconds(server.pid)
    stats: dict[str, Any] = (await client.info("commandstats")).get("cmdstat_evalsha", {})
    assert before is not None and after is not None
    return (after - before) / (calls * flushes) * 1e6, float(stats.get("usec_per_call", 0.0))


async def main(args: argparse.Namespace) -> int:
    rows: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        rows.setdefault(name, []).append(value)

    with tempfile.TemporaryDirectory(prefix="append-floor-") as tmp:
        server = RedisProcess(Path(tmp))
        await server.start()
        assert server.client is not None
        try:
            store = Store(server.client, Keys("rs", 1), retention_seconds=600)
            job_ids = []
            for _ in range(args.jobs):
                job_id = await store.create(REQUEST, provider="simulated", model="sim-default")
                # What a claim leaves in the meta that APPEND checks: running, this owner's.
                await server.client.hset(
                    store.keys.meta(job_id), mapping={"status": "running", "owner": OWNER}
                )
                job_ids.append(job_id)
            jobs = Jobs(store, job_ids)
            await jobs.flush(1, None)  # the script cached, the pool connected
            for n in range(args.rounds):
                for size in SIZES:
                    lane = Lane(server.client)
                    try:
                        note(f"pool {size}", await worker_flush_us(jobs, size, None, args.flushes))
                        note(f"lane {size}", await worker_flush_us(jobs, size, lane, args.flushes))
                    finally:
                        await lane.aclose()
                for gap in (args.gap_ms / 1000, 0.0):
                    cpu, inside = await redis_call_us(server, jobs, args.calls, gap, args.flushes)
                    note(f"redis cpu {gap}", cpu)
                    note(f"redis evalsha {gap}", inside)
                say(f"round {n + 1} done")
        finally:
            await server.aclose()

    median = {name: statistics.median(values) for name, values in rows.items()}
    print(f"# {command()}")
    print(f"# {machine()['cpu']}; median of {args.rounds} rounds, {args.flushes} flushes each")
    print()
    print("| connection | " + " | ".join(f"µs per flush of {s}" for s in SIZES)
          + " | µs per call | µs per round trip |")  # fmt: skip
    print("|---|" + "---|" * (len(SIZES) + 2))
    for kind in ("pool", "lane"):
        small, large = median[f"{kind} {SIZES[0]}"], median[f"{kind} {SIZES[-1]}"]
        per_call = (large - small) / (SIZES[-1] - SIZES[0])
        cells = " | ".join(f"{median[f'{kind} {s}']:.0f}" for s in SIZES)
        print(f"| {kind} | {cells} | {per_call:.1f} | {small - per_call * SIZES[0]:.0f} |")
    print()
    print(f"| flushes of {args.calls} calls | Redis CPU µs per call | EVALSHA µs per call |")
    print("|---|---|---|")
    for gap, label in ((args.gap_ms / 1000, f"{args.gap_ms:g} ms apart"), (0.0, "back to back")):
        print(
            f"| {label} | {median[f'redis cpu {gap}']:.1f} | {median[f'redis evalsha {gap}']:.1f} |"
        )
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--flushes", type=int, default=1000, help="flushes per measurement")
    parser.add_argument("--calls", type=int, default=10, help="calls per flush (Redis side)")
    parser.add_argument("--gap-ms", type=float, default=5.0, help="between flushes (Redis side)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    run(main(parse(sys.argv[1:])))
