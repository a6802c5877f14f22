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
import collections
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from reviewstream.bench.server import cpu_seconds
from reviewstream.processes.redis_server import redis_server_binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url}/readyz did not answer 200 within {seconds:g} s")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--followers", type=int, default=250)
    parser.add_argument("--profile", type=Path, help="sample the server with py-spy into this")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=40, help="frames to print")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rs-lp-profile-"))
    sock = work / "redis.sock"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVIEWSTREAM_")}
    env |= {
        "REVIEWSTREAM_REDIS_URL": f"unix://{sock}",
        "REVIEWSTREAM_PROVIDER": "simulated",
        "REVIEWSTREAM_SIM_TOKENS_PER_SECOND": "20",
        "REVIEWSTREAM_SIM_FIRST_TOKEN_MS": "1000",
        "REVIEWSTREAM_COALESCE_MS": "0",
        "REVIEWSTREAM_WORKER_CONCURRENCY": "256",
    }
    py = sys.executable
    children: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str]) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(
            argv, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        children.append(child)
        return child

    try:
        redis_argv = [redis_server_binary(), "--port", "0", "--unixsocket", str(sock),
                      "--save", "", "--appendonly", "no", "--dir", str(work)]  # fmt: skip
        start(redis_argv)
        serve_argv = [py, "-m", "reviewstream", "serve", "--api-only", "--host", "127.0.0.1",
                      "--port", str(port), "--log-level", "warning"]  # fmt: skip
        time.sleep(0.3)
        server = start(serve_argv)
        start([py, "-m", "reviewstream", "worker"])
        wait_ready(url)
        spy = None
        if args.profile:
            spy_argv = ["py-spy", "record", "--pid", str(server.pid), "--rate", str(args.rate),
                        "--format", "raw", "--nonblocking", "-o", str(args.profile)]  # fmt: skip
            spy = subprocess.Popen(spy_argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        out = work / "bench"
        before = cpu_seconds(server.pid) or 0.0
        bench = [py, "-m", "reviewstream", "bench", "--url", url, "--modes", "long_poll",
                 "--followers", str(args.followers), "--per-job", "10", "--rate", "20",
                 "--fanout-rate", "20", "--repeat", "1", "--warmup", "0", "--coalesce-ms", "0",
                 "--output", str(out)]  # fmt: skip
        subprocess.run(bench, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spent = (cpu_seconds(server.pid) or 0.0) - before
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        runs = json.loads((out / "results.json").read_text())["fanout"]["long_poll"]
        requests = sum(run["followers"] * run["requests_per_job"] for run in runs)
        for run in runs:
            latency = run["latency_ms"]
            print(
                f"{run['followers']:>5} followers: p50 {latency['p50']:.1f} ms,"
                f" p99 {latency['p99']:.1f} ms, {run['requests_per_job']:.1f} requests/job,"
                f" {run['errors']} errors"
            )
        print(f"server CPU {spent:.2f} s for {requests:.0f} requests:"
              f" {1e6 * spent / requests:.0f} us per request")  # fmt: skip
        if args.profile:
            print(top_frames(args.profile, args.top))
    finally:
        for child in reversed(children):
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
