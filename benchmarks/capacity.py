"""The capacity table: every mode at 500, 1,000 and 2,000 followers, 20 tokens/s, on 1 and on 2
API processes (``reviewstream serve --processes N``), from ``reviewstream bench``'s own fan-out
sweep.

For each process count the script runs ``reviewstream bench --processes N`` (its private
redis-server, the simulated model, workers placed as ``serve`` places them: one worker process)
and reads its results.json. It prints, and writes to ``--output``/capacity.txt and
capacity.json, one row per mode x processes x followers: p50/p99 delivery latency, errors,
server CPU (every process of the server) and the benchmark client's CPU (it shares the cores),
Redis commands and Redis CPU per 1,000 delivered tokens (net of producing the jobs: what the
followers cost), and then, per mode and process count, the most followers served at p99 <= 50 ms
with no error — and that divided by the processes: the followers one API process serves.

    python benchmarks/capacity.py
    python benchmarks/capacity.py --processes 1,2 --followers 500,1000,2000 --repeat 2 \\
        --output benchmarks/results/capacity

It runs whatever ``reviewstream`` Python imports (``PYTHONPATH=some/src`` to compare trees).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import command, machine

from reviewstream.bench.report import fmt

P99_MS = 50.0  # the latency a follower count must hold to count as served
MODES = ("short_poll", "long_poll", "sse", "websocket")


def run_bench(processes: int, args: argparse.Namespace) -> dict[str, Any]:
    out = args.output / f"processes-{processes}"
    argv = [
        sys.executable, "-m", "reviewstream", "bench", "--processes", str(processes),
        "--followers", args.followers, "--fanout-rate", "20", "--rate", "20",
        "--coalesce-ms", "0", "--poll-interval", "1", "--fanout-poll-interval", "1",
        "--repeat", str(args.repeat), "--warmup", "1", "--modes", args.modes,
        "--output", str(out),
    ]  # fmt: skip
    print("$", " ".join(argv[1:]), flush=True)
    subprocess.run(argv, check=True)
    return dict(json.loads((out / "results.json").read_text()))


def rows(processes: int, results: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for mode, sweep in results["fanout"].items():
        for r in sweep:
            latency = r.get("latency_ms") or {}
            found.append(
                {
                    "mode": mode,
                    "processes": processes,
                    "followers": int(r["followers"]),
                    "p50_ms": latency.get("p50"),
                    "p99_ms": latency.get("p99"),
                    "errors": int(r.get("errors", 0)) + int(r.get("lost", 0)),
                    "server_cpu_pct": r.get("server_cpu_pct"),
                    "client_cpu_pct": r.get("client_cpu_pct"),
                    "redis_cmds_per_1k_tokens": _times(r.get("redis_cmds_per_token"), 1000),
                    "redis_cpu_ms_per_1k_tokens": _times(r.get("redis_cpu_s_per_1k_tokens"), 1000),
                }
            )
    return found


def _times(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def served(table: list[dict[str, Any]], mode: str, processes: int) -> int:
    """The most followers of ``mode`` served at p99 <= 50 ms with no error."""
    ok = [
        r["followers"]
        for r in table
        if r["mode"] == mode and r["processes"] == processes
        and r["p99_ms"] is not None and r["p99_ms"] <= P99_MS and r["errors"] == 0
    ]  # fmt: skip
    return max(ok, default=0)


def render(table: list[dict[str, Any]], process_counts: list[int]) -> str:
    head = (
        f"{'mode':<11}{'procs':>6}{'followers':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'server CPU%':>12}{'client CPU%':>12}{'Redis cmd/1k tok':>17}{'Redis CPU ms/1k tok':>20}"
    )
    lines = [
        "Capacity: 20 tokens/s, 10 followers per job, short poll every 1 s "
        "(reviewstream bench's fan-out sweep, medians of its repeats)",
        head,
        "-" * len(head),
    ]
    order = {m: i for i, m in enumerate(MODES)}
    for r in sorted(table, key=lambda r: (order.get(r["mode"], 9), r["processes"], r["followers"])):
        lines.append(
            f"{r['mode']:<11}{r['processes']:>6}{r['followers']:>10,}{fmt(r['p50_ms'], 2):>9}"
            f"{fmt(r['p99_ms']):>9}{r['errors']:>8,}{fmt(r['server_cpu_pct'], 0):>12}"
            f"{fmt(r['client_cpu_pct'], 0):>12}{fmt(r['redis_cmds_per_1k_tokens']):>17}"
            f"{fmt(r['redis_cpu_ms_per_1k_tokens'], 2):>20}"
        )
    lines += ["", f"Followers served at p99 <= {P99_MS:g} ms with no error (per API process):"]
    for mode in sorted({r["mode"] for r in table}, key=lambda m: order.get(m, 9)):
        cells = []
        for n in process_counts:
            most = served(table, mode, n)
            cells.append(f"{n} process(es): {most:,} ({most // n:,} per process)")
        lines.append(f"  {mode:<11}" + "; ".join(cells))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--processes", default="1,2", help="API process counts (default 1,2)")
    parser.add_argument("--followers", default="500,1000,2000", help="followers per mode")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--repeat", type=int, default=2, help="runs per load (medians)")
    parser.add_argument("--output", type=Path, default=Path("out/capacity"))
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    counts = [int(n) for n in args.processes.split(",")]
    table: list[dict[str, Any]] = []
    for n in counts:
        table += rows(n, run_bench(n, args))
    text = render(table, counts)
    print(text)
    (args.output / "capacity.txt").write_text(text)
    served_by = {
        mode: {str(n): served(table, mode, n) for n in counts}
        for mode in {r["mode"] for r in table}
    }
    document = {"command": command(), "machine": machine(), "rows": table}
    document["served_at_p99_50ms"] = served_by
    (args.output / "capacity.json").write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
