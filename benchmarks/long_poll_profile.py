"""Where a long poll's CPU goes: server CPU per request, and py-spy's top frames, under load.

Starts a private redis-server, ``reviewstream serve --api-only`` and a ``reviewstream worker``
of its own (so producing the jobs stays out of the API process's figures), then runs the
benchmark's long-poll fan-out against the server (``reviewstream bench --url``, 10 followers per
job, 20 tokens/s, coalescing off). Reports the server's CPU per long-poll request (``/proc``, its
CPU over the run divided by the requests the followers made) and, with ``--profile``, samples
the server with py-spy (``pip install py-spy``; needs ptrace rights) and prints the frames that
hold the most samples, inclusive and self.

    python benchmarks/long_poll_profile.py --followers 250 --profile /tmp/lp.txt

It runs whatever ``reviewstream`` Python imports (``PYTHONPATH=some/src`` to compare trees).
``--profile`` writes py-spy's raw (collapsed) stacks, which flamegraph.pl or speedscope read.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import shutil
import signal
import tempfile
from pathlib import Path

from harness import Children, Failure, run, wait_healthy, wait_ready

from reviewstream.bench.server import RedisProcess, cpu_seconds, free_port

SETTINGS = {
    "provider": "simulated",
    "sim_tokens_per_second": "20",
    "sim_first_token_ms": "1000",
    "coalesce_ms": "0",
    "worker_concurrency": "256",
}


def top_frames(raw: Path, n: int) -> str:
    """The frames holding the most samples in py-spy's raw output: inclusive, then self."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += samples
        own[frames[-1]] += samples
    lines = [f"{total} samples", "inclusive:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(n)]
    lines.append("self:")
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(n)]
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    """Start the system, load it (and sample it), print what a request cost."""
    work = Path(tempfile.mkdtemp(prefix="rs-lp-profile-"))
    redis = RedisProcess(work)
    try:
        async with Children(work) as children:
            await redis.start()
            settings = {**SETTINGS, "redis_url": redis.url}
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            serve = ["serve", "--api-only", "--host", "127.0.0.1", "--port", str(port),
                     "--log-level", "warning"]  # fmt: skip
            server = await children.reviewstream("api", *serve, **settings)
            await children.reviewstream("worker", "worker", **settings)
            await wait_healthy(url, server)
            await wait_ready(url)
            spy = None
            if args.profile:
                spy_argv = ["py-spy", "record", "--pid", str(server.pid), "--rate",
                            str(args.rate), "--format", "raw", "--nonblocking",
                            "-o", str(args.profile)]  # fmt: skip
                spy = await children.start("py-spy", spy_argv)
            out = work / "bench"
            before = cpu_seconds(server.pid) or 0.0
            bench = ["bench", "--url", url, "--modes", "long_poll", "--followers",
                     str(args.followers), "--per-job", "10", "--rate", "20", "--fanout-rate",
                     "20", "--repeat", "1", "--warmup", "0", "--coalesce-ms", "0",
                     "--output", str(out)]  # fmt: skip
            load = await children.reviewstream("bench", *bench)
            if await load.process.wait():
                raise Failure(f"reviewstream bench exited {load.process.returncode}: {load.log}")
            spent = (cpu_seconds(server.pid) or 0.0) - before
            if spy is not None:
                spy.signal(signal.SIGINT)
                await asyncio.wait_for(spy.process.wait(), 30)  # py-spy writes its profile
            runs = json.loads((out / "results.json").read_text())["fanout"]["long_poll"]
    finally:
        await redis.aclose()
        shutil.rmtree(work, ignore_errors=True)
    requests = sum(row["followers"] * row["requests_per_job"] for row in runs)
    for row in runs:
        latency = row["latency_ms"]
        print(
            f"{row['followers']:>5} followers: p50 {latency['p50']:.1f} ms,"
            f" p99 {latency['p99']:.1f} ms, {row['requests_per_job']:.1f} requests/job,"
            f" {row['errors']} errors"
        )
    print(f"server CPU {spent:.2f} s for {requests:.0f} requests:"
          f" {1e6 * spent / requests:.0f} us per request")  # fmt: skip
    if args.profile:
        print(top_frames(args.profile, args.top))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--followers", type=int, default=250)
    parser.add_argument("--profile", type=Path, help="sample the server with py-spy into this")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=40, help="frames to print")
    run(main(parser.parse_args()))
