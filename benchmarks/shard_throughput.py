"""How many appended tokens per second one Redis shard sustains, with the producers spread over
worker processes.

For each ``--worker-processes`` count P the script starts a private redis-server,
``reviewstream serve --api-only`` (it only takes the jobs) and P ``reviewstream worker``
processes sharing ``--concurrency`` jobs at once between them (the simulated model at ``--rate``
tokens/s per job, no wait for the first token), queues enough long reviews to keep every slot
busy, lets them warm up, then measures ``--seconds``: tokens appended (the lengths of the
jobs' token lists), append scripts run (EVALSHA calls), and the CPU of Redis, of the workers
and of this script. Each token is one APPEND script call: RPUSH of the token and of its
time, one PUBLISH.

Per P the median of ``--runs`` runs is printed: tokens/s, Redis CPU (% of one core) and
**tokens per Redis CPU-second** — the appends one shard's core could take if nothing else
competed for it, which is the figure to size shards by. Where the workers and Redis share a few
cores, the achieved tokens/s is bounded by the workers' CPU long before Redis' own; the
projection is what the table reports as one shard's capacity.

    python benchmarks/shard_throughput.py
    python benchmarks/shard_throughput.py --worker-processes 1,2 --concurrency 64 --rate 200 \\
        --runs 3 --json benchmarks/results/shard_throughput.json

It runs whatever ``reviewstream`` Python imports (``PYTHONPATH=some/src`` to compare trees).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from harness import Children, run, wait_healthy, wait_ready

from reviewstream.bench.runner import job_body
from reviewstream.bench.server import (
    RedisProcess,
    client_cpu_seconds,
    cpu_seconds,
    free_port,
    raise_open_files_limit,
)
from reviewstream.keys import Keys


@dataclass
class Run:
    """What one run measured over its window."""

    worker_processes: int
    seconds: float
    tokens: int
    appends: int
    redis_cpu: float
    workers_cpu: float
    client_cpu: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    @property
    def tokens_per_redis_cpu_second(self) -> float:
        return self.tokens / self.redis_cpu if self.redis_cpu else 0.0


def _settings(redis_url: str, rate: float, concurrency: int) -> dict[str, str]:
    return {
        "redis_url": redis_url,
        "provider": "simulated",
        "sim_tokens_per_second": f"{rate:g}",
        "sim_first_token_ms": "0",
        "worker_concurrency": str(concurrency),
    }


async def _counts(redis: RedisProcess, keys: Keys, job_ids: list[str]) -> int:
    assert redis.client is not None
    async with redis.client.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.llen(keys.chunks(job_id))
        return sum(int(n) for n in await pipe.execute())


async def _appends(redis: RedisProcess) -> int:
    stats = await redis.commandstats()
    return stats.get("evalsha", 0) + stats.get("eval", 0)


async def one_run(args: argparse.Namespace, processes: int) -> Run:
    workdir = Path(tempfile.mkdtemp(prefix="reviewstream-shard-"))
    redis = RedisProcess(workdir)
    try:
        async with Children(workdir) as children:
            await redis.start()
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            api_settings = _settings(redis.url, args.rate, args.concurrency)
            api_settings["max_queued_jobs"] = str(args.concurrency * 8)
            serve = ["serve", "--api-only", "--host", "127.0.0.1", "--port", str(port),
                     "--log-level", "warning"]  # fmt: skip
            api = await children.reviewstream("api", *serve, **api_settings)
            share = _settings(redis.url, args.rate, max(1, args.concurrency // processes))
            workers = [
                await children.reviewstream("worker", "worker", **share) for _ in range(processes)
            ]
            await wait_healthy(base, api, 60)
            await wait_ready(base)
            keys = Keys()
            job_ids: list[str] = []
            async with httpx.AsyncClient(timeout=30) as client:
                for _ in range(args.concurrency * 2):
                    reply = await client.post(base + "/jobs", json=job_body(1500))
                    reply.raise_for_status()
                    job_ids.append(reply.json()["id"])
            await asyncio.sleep(args.warmup)
            assert redis.pid is not None
            pids = [w.pid for w in workers]
            t0 = time.monotonic()
            tokens0, appends0 = await _counts(redis, keys, job_ids), await _appends(redis)
            redis0, client0 = cpu_seconds(redis.pid) or 0.0, client_cpu_seconds()
            workers0 = sum(cpu_seconds(p) or 0.0 for p in pids)
            await asyncio.sleep(args.seconds)
            tokens1, appends1 = await _counts(redis, keys, job_ids), await _appends(redis)
            redis1, client1 = cpu_seconds(redis.pid) or 0.0, client_cpu_seconds()
            workers1 = sum(cpu_seconds(p) or 0.0 for p in pids)
            return Run(
                worker_processes=processes,
                seconds=time.monotonic() - t0,
                tokens=tokens1 - tokens0,
                appends=appends1 - appends0,
                redis_cpu=redis1 - redis0,
                workers_cpu=workers1 - workers0,
                client_cpu=client1 - client0,
            )
    finally:
        await redis.aclose()
        shutil.rmtree(workdir, ignore_errors=True)


def summary(runs: list[Run]) -> dict[str, float]:
    def median(values: list[float]) -> float:
        return statistics.median(values)

    return {
        "worker_processes": runs[0].worker_processes,
        "runs": len(runs),
        "tokens_per_second": median([r.tokens_per_second for r in runs]),
        "appends_per_second": median([r.appends / r.seconds for r in runs]),
        "redis_cpu_percent": median([100 * r.redis_cpu / r.seconds for r in runs]),
        "workers_cpu_percent": median([100 * r.workers_cpu / r.seconds for r in runs]),
        "client_cpu_percent": median([100 * r.client_cpu / r.seconds for r in runs]),
        "tokens_per_redis_cpu_second": median([r.tokens_per_redis_cpu_second for r in runs]),
    }


async def main(args: argparse.Namespace) -> int:
    raise_open_files_limit()
    results = []
    print(f"load: {args.concurrency} jobs at once at {args.rate:g} tok/s each, cores: "
          f"{os.cpu_count()}")  # fmt: skip
    for processes in [int(p) for p in args.worker_processes.split(",")]:
        runs = [await one_run(args, processes) for _ in range(args.runs)]
        row = summary(runs)
        results.append({"summary": row, "runs": [asdict(r) for r in runs]})
        print(
            f"{processes} worker process(es): {row['tokens_per_second']:,.0f} tokens/s "
            f"({row['appends_per_second']:,.0f} scripts/s), Redis CPU "
            f"{row['redis_cpu_percent']:.0f}%, workers CPU {row['workers_cpu_percent']:.0f}%, "
            f"bench CPU {row['client_cpu_percent']:.0f}% -> "
            f"{row['tokens_per_redis_cpu_second']:,.0f} tokens per Redis CPU-second"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "results": results}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--worker-processes", default="1,2", help="comma-separated (default 1,2)")
    parser.add_argument("--concurrency", type=int, default=64, help="jobs at once, all workers")
    parser.add_argument("--rate", type=float, default=200.0, help="tokens/s per job (default 200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the runs and medians here")
    run(main(parser.parse_args()))
