"""What producing costs: a worker's CPU and its Redis's CPU per appended token, with every job
producing at once and nobody following.

The script starts a private redis-server and ``reviewstream worker`` (the simulated model at
``--rate`` tokens/s, ``REVIEWSTREAM_WORKER_CONCURRENCY`` above ``--jobs``), creates ``--jobs``
jobs straight in the store (no API process: its cost is not the producer's), waits ``--settle``
seconds for every job to produce, then measures over ``--window`` seconds:

- **worker us/token**: the worker process's CPU (``/proc``, every thread) / tokens appended;
- **redis us/token**: redis-server's CPU (``/proc``) / tokens appended;
- **cmds/token**: Redis commands (``INFO commandstats``, the script's own reads excluded, a
  script's inner commands included) / tokens appended;
- **tokens/s**: tokens appended per second (the load: ``jobs × rate`` when the worker keeps up);
- **worker KiB/job**: the worker's resident memory with every job running, less its memory
  before the first job, per job (what sizing ``REVIEWSTREAM_WORKER_CONCURRENCY`` costs).

Tokens appended = the growth of every job's token list over the window. Each round starts a
fresh Redis and worker per tree; with several ``--tree`` the trees run interleaved, round by
round, and the figures are the median over ``--rounds``.

    python benchmarks/append_cost.py --jobs 100 --rate 20 --rounds 3 \\
        --tree before=/tmp/before/src --tree after=src

A tree is a ``src`` directory whose ``reviewstream`` the worker runs (default: the one this
script imports). Extra settings for the worker: ``--set APPEND_FLUSH_MS=2`` (repeatable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from harness import Children, child_env, command, machine, run, say, until

from reviewstream.bench.server import BENCH_COMMANDS, RedisProcess, cpu_seconds, rss_bytes
from reviewstream.keys import Keys
from reviewstream.models import ReviewRequest
from reviewstream.store import Store

REQUEST = ReviewRequest(
    employee_name="Ada Lovelace",
    employee_review_points="Led the payments migration; mentors two juniors; ships on time.",
    length_words=1500,  # long enough to outlast the window at any sensible rate
    model="sim-default",
)


FIGURES = (
    "tokens_per_s",
    "worker_us_per_token",
    "redis_us_per_token",
    "cmds_per_token",
    "kib_per_job",
)


def redis_calls(info: dict[str, Any]) -> int:
    """Commands Redis ran (the benchmark's own excluded; ``llen`` is this script's read)."""
    total = 0
    for key, value in info.items():
        name = key.removeprefix("cmdstat_").lower().split("|")[0]
        if name not in BENCH_COMMANDS and name != "llen" and isinstance(value, dict):
            total += int(value.get("calls", 0))
    return total


async def stored(redis: aioredis.Redis, keys: Keys, job_ids: list[str]) -> int:
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.llen(keys.chunks(job_id))
        return sum(int(n) for n in await pipe.execute())


async def one_round(
    tree: str, src: Path | None, args: argparse.Namespace, settings: dict[str, str]
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="append-cost-") as tmp:
        workdir = Path(tmp)
        redis_server = RedisProcess(workdir)
        await redis_server.start()
        client = redis_server.client
        assert client is not None and redis_server.pid is not None
        keys = Keys("rs", 1)
        store = Store(client, keys, retention_seconds=600)
        try:
            async with Children(workdir) as children:
                env = {
                    "redis_url": redis_server.url,
                    "worker_concurrency": str(args.jobs + 10),
                    "sim_tokens_per_second": str(args.rate),
                    "sim_first_token_ms": "0",
                    **settings,
                }
                child = child_env(env)
                if src is not None:
                    child["PYTHONPATH"] = str(src)
                worker = await children.start(
                    "worker", [sys.executable, "-m", "reviewstream", "worker"], child
                )

                async def alive() -> bool:
                    return bool(await client.zcard(keys.workers))

                await until(alive, 30, "the worker's heartbeat")
                idle_rss = rss_bytes(worker.pid)
                job_ids = [
                    await store.create(REQUEST, provider="simulated", model="sim-default")
                    for _ in range(args.jobs)
                ]
                await asyncio.sleep(args.settle)
                t0, n0 = time.monotonic(), await stored(client, keys, job_ids)
                w0, r0 = cpu_seconds(worker.pid), cpu_seconds(redis_server.pid)
                c0 = redis_calls(await client.info("commandstats"))
                await asyncio.sleep(args.window)
                w1, r1 = cpu_seconds(worker.pid), cpu_seconds(redis_server.pid)
                c1 = redis_calls(await client.info("commandstats"))
                t1, n1 = time.monotonic(), await stored(client, keys, job_ids)
                busy_rss = rss_bytes(worker.pid)
                await worker.stop()
        finally:
            await redis_server.aclose()
    assert w0 is not None and w1 is not None and r0 is not None and r1 is not None
    assert idle_rss is not None and busy_rss is not None
    tokens = max(n1 - n0, 1)
    return {
        "tree": tree,
        "tokens_per_s": round(tokens / (t1 - t0), 1),
        "worker_us_per_token": round((w1 - w0) / tokens * 1e6, 1),
        "redis_us_per_token": round((r1 - r0) / tokens * 1e6, 1),
        "cmds_per_token": round((c1 - c0) / tokens, 2),
        "kib_per_job": round((busy_rss - idle_rss) / 1024 / args.jobs, 1),
    }


def trees_of(specs: list[str] | None) -> list[tuple[str, Path | None]]:
    trees: list[tuple[str, Path | None]] = []
    for spec in specs or ["this"]:
        name, _, path = spec.partition("=")
        trees.append((name, Path(path).resolve() if path else None))
    return trees


async def main(args: argparse.Namespace) -> int:
    trees = trees_of(args.tree)
    settings = {}
    for item in args.set or []:
        name, _, value = item.partition("=")
        settings[name.lower()] = value
    rounds: list[dict[str, Any]] = []
    for n in range(args.rounds):
        for name, src in trees:
            result = await one_round(name, src, args, settings)
            say(f"round {n + 1} {json.dumps(result)}")
            rounds.append(result)
    print(f"# {command()}")
    print(f"# {args.jobs} jobs at {args.rate:g} tok/s, window {args.window:g} s, median of "
          f"{args.rounds} rounds")  # fmt: skip
    print("| tree | tokens/s | worker µs/token | redis µs/token | cmds/token | worker KiB/job |")
    print("|---|---|---|---|---|---|")
    summary = []
    for name, _ in trees:
        mine = [r for r in rounds if r["tree"] == name]
        row = {key: statistics.median(r[key] for r in mine) for key in FIGURES}
        summary.append({"tree": name, **row})
        print(
            f"| {name} | {row['tokens_per_s']:.0f} | {row['worker_us_per_token']:.1f} |"
            f" {row['redis_us_per_token']:.1f} | {row['cmds_per_token']:.2f} |"
            f" {row['kib_per_job']:.0f} |"
        )
    if args.json:
        report = {"command": command(), "machine": machine(), "rounds": rounds, "summary": summary}
        with open(args.json, "w") as f:  # noqa: ASYNC230 - once, after the measurement
            json.dump(report, f, indent=2)
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0, help="tokens/s per job")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before the window")
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", action="append", help="NAME=SRC_DIR (repeatable)")
    parser.add_argument("--set", action="append", help="NAME=VALUE: REVIEWSTREAM_NAME (repeatable)")
    parser.add_argument("--json", help="write the rounds and the summary here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    run(main(parse(sys.argv[1:])))
