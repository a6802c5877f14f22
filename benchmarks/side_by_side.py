"""Side by side with a peer server: each load on reviewstream, then on the peer.

    python benchmarks/side_by_side.py --peer durable-streams --output benchmarks/results
    python benchmarks/side_by_side.py --peer resumable-stream --output benchmarks/results

For each follower count and each mode the peer speaks (long poll and SSE for Durable Streams,
SSE for vercel/resumable-stream), the same load runs on reviewstream (``serve`` with its worker
process, every job producing at once, coalescing off, the simulated model) and then on the peer
(``peers/``, one module each): the same number of jobs (streams) and followers per job, the
same token rate, the same tokens, the same time to first token, followers started as each job
is created (so attached before its first token), the same client code (``reviewstream.bench``'s
``conn`` and ``followers``) and the same checks, one run each unless ``--repeat`` says
otherwise. Both servers stay up for the whole run (an idle one costs next to nothing), so
alternating them load by load spreads the machine's background noise over both. Besides
latency, each side's CPU per produced token by process kind.

The options are ``reviewstream bench``'s (read by its ``options_from_args``) with defaults of
their own (``LOADS``), and ``--peer``, ``--peer-dir``, ``--peer-version``. Ratios are
reviewstream / peer: below 1, reviewstream's latency is the lower. The targets of issue 12 are
judged on the loads that ran (``TARGETS``).

Before the loads: the job's tokens are read once from reviewstream (a job of the simulated
model's ``sim-fast`` preset: same request, same text, written at once), and ``--warmup``
discarded runs per mode warm both servers up.

``side_by_side.json`` and ``side_by_side.txt`` go to ``--output``. The exit status is 2 when the
peer cannot be installed or run (what is missing is said in one line), 1 when the smallest load
had errors on either side.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

import httpx
from harness import command, machine, run, say
from peers import Install, Peer, PeerUnavailable, default_dir, durable_streams, resumable_stream

from reviewstream.bench import cli as bench_cli
from reviewstream.bench.machine import source_fingerprint
from reviewstream.bench.plan import BenchOptions, Scenario, ServerConfig, split_load
from reviewstream.bench.report import CPU_KINDS, fmt, grid, write_json
from reviewstream.bench.runner import job_body, run_scenario, stored_tokens
from reviewstream.bench.server import System, raise_open_files_limit
from reviewstream.bench.stats import combine, latency_summary, run_summary
from reviewstream.bench.suite import redis_version, system_for

Progress = Callable[[str], None]
PEERS: dict[str, Peer] = {
    durable_streams.NAME: durable_streams,
    resumable_stream.NAME: resumable_stream,
}
RESULTS_NAME = "side_by_side.json"
TABLE_NAME = "side_by_side.txt"
# What the side-by-side runs unless told otherwise (--quick's options and explicit ones win):
# issue 12's loads. The modes are the peer's.
LOADS: dict[str, Any] = {"followers": (1, 100, 250, 500), "repeat": 1}
# Issue 12's targets: (mode, followers, what is compared).
TARGETS = (
    ("long_poll", 1, "p50"),
    ("long_poll", 100, "p99"),
    ("long_poll", 250, "p99"),
    ("long_poll", 500, "p99"),
    ("sse", 100, "p99"),
    ("sse", 250, "p99"),
    ("sse", 500, "p99"),
)
P50_TOLERANCE_MS = 1.0
NOTES = (
    "latency = the client's arrival time.time() - the token's timestamp, same host, same clock",
    "reviewstream's timestamp: the moment its worker received the token from the model, on the"
    " Redis clock (before the group commit's flush and the trip through Redis to the readers)",
)
RATIO_NOTE = "ratios are reviewstream / peer: below 1, reviewstream's figure is the lower"


# -- the command line ----------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """``reviewstream bench``'s options, and the peer's."""
    parser = argparse.ArgumentParser(prog="python benchmarks/side_by_side.py")
    bench_cli.add_arguments(parser)
    parser.description = (
        "Each load on reviewstream, then on a peer server: latency, errors and CPU side by side."
    )
    modes = "; ".join(f"{p.NAME}: {','.join(p.MODES)}" for p in PEERS.values())
    followers = ",".join(map(str, LOADS["followers"]))
    peer = parser.add_argument_group(
        "side by side with a peer",
        f"defaults here: the peer's modes ({modes}), followers {followers}, 1 run each",
    )
    peer.add_argument(
        "--peer", choices=sorted(PEERS), default=durable_streams.NAME, help="the peer server"
    )
    peer.add_argument(
        "--peer-dir", type=Path, help=f"where the peer is installed (default {default_dir()})"
    )
    peer.add_argument(
        "--peer-version",
        help="the peer package's version (default: "
        + ", ".join(f"{p.NAME} {p.DEFAULT_VERSION}" for p in PEERS.values())
        + ")",
    )
    return parser


def options_from_args(args: argparse.Namespace) -> tuple[BenchOptions, Peer, Path, str]:
    """The loads' options, the peer, where it is installed and its version."""
    peer = PEERS[args.peer]
    options = bench_cli.options_from_args(args, {**LOADS, "modes": peer.MODES})
    other = [m for m in options.modes if m not in peer.MODES]
    if other:
        raise SystemExit(
            f"--peer {peer.NAME} compares {' and '.join(peer.MODES)} only, not {other[0]}"
        )
    if options.memory:
        raise SystemExit("--memory is not part of the side-by-side run")
    return options, peer, args.peer_dir or default_dir(), args.peer_version or peer.DEFAULT_VERSION


# -- the run -------------------------------------------------------------------------------


async def job_tokens(system: System, length_words: int, seconds: float = 60.0) -> list[str]:
    """The tokens of the benchmark's job on reviewstream (a ``sim-fast`` job, read back)."""
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
        response = await client.post("/jobs", json={**job_body(length_words), "model": "sim-fast"})
        if response.status_code != 202:  # not the simulated model: one job at its own pace
            response = await client.post("/jobs", json=job_body(length_words))
        if response.status_code != 202:
            raise RuntimeError(f"POST /jobs answered {response.status_code}: {response.text[:200]}")
        job_id = str(response.json()["id"])
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            page = (await client.get(f"/jobs/{job_id}", params={"limit": 1})).json()
            if page["status"] not in ("queued", "running"):
                tokens, ok = await stored_tokens(client, job_id)
                if not ok:
                    raise RuntimeError(f"the reference job ended {page['status']}")
                return tokens
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the reference job did not end within {seconds:g} s")


def _side(summary: dict[str, Any], mode: str, tokens: int) -> dict[str, Any]:
    """One system's figures for one load."""
    entry = summary["modes"][mode]
    duration = summary["duration_s"] or float("nan")
    redis_cpu = summary.get("redis_cpu_s")
    keys = (
        "followers", "ttft_ms", "e2e_ms", "connect_ms_max", "requests_per_job",
        "messages_per_job", "bytes_per_job", "delivered_tokens", "history_tokens", "errors",
        "lost", "duplicated", "unfinished", "error_messages",
    )  # fmt: skip
    side = {k: entry.get(k) for k in keys}
    side["latency_ms"] = {k: entry["latency_ms"][k] for k in ("p50", "p95", "p99", "max", "n")}
    side["latency_live_ms"] = {k: entry["latency_live_ms"][k] for k in ("p50", "p99")}
    side["tokens_per_job"] = summary["appended_tokens"] / summary["jobs"] if summary["jobs"] else 0
    side["expected_tokens_per_job"] = tokens
    side["duration_s"] = summary["duration_s"]
    side["server_cpu_s"] = summary["server_cpu_s"]
    side["server_cpu_pct"] = summary["server_cpu_pct"]
    side["redis_cpu_pct"] = 100 * redis_cpu / duration if redis_cpu is not None else None
    side["client_cpu_pct"] = summary["client_cpu_pct"]
    side["cpu_us_per_produced_token"] = summary["cpu_us_per_produced_token"]
    if "append_ms" in summary:
        side["append_ms"] = summary["append_ms"]
    return side


def _doubts(row: dict[str, Any], tokens: int) -> list[str]:
    """What makes a row less comparable than it should be."""
    doubts = []
    where = f"{row['mode']} at {row['followers']}"
    for side in ("reviewstream", "peer"):
        figures = row[side]
        if figures["tokens_per_job"] != tokens:
            doubts.append(
                f"{side}, {where}: {figures['tokens_per_job']:g} tokens appended per job, "
                f"{tokens} expected"
            )
        if figures["history_tokens"]:
            doubts.append(
                f"{side}, {where}: {figures['history_tokens']} tokens reached followers that "
                "connected after their append (history, not live)"
            )
    return doubts


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b <= 0:
        return None
    return a / b


def compare(
    mode: str, followers: int, jobs: int, per_job: int, ours: dict[str, Any], peer: dict[str, Any]
) -> dict[str, Any]:
    """A load's row: both sides, the ratios (reviewstream / peer) and the p50 difference."""
    a, b = ours["latency_ms"], peer["latency_ms"]
    diff = a["p50"] - b["p50"] if a["n"] and b["n"] else None
    return {
        "mode": mode,
        "followers": followers,
        "jobs": jobs,
        "per_job": per_job,
        "reviewstream": ours,
        "peer": peer,
        "p50_ratio": _ratio(a["p50"], b["p50"]),
        "p99_ratio": _ratio(a["p99"], b["p99"]),
        "p50_diff_ms": diff,
    }


def judge(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 12's targets that the loads run can judge: met only without errors on our side."""
    verdicts = []
    for mode, followers, what in TARGETS:
        row = next((r for r in rows if r["mode"] == mode and r["followers"] == followers), None)
        if row is None:
            continue
        ours, peer = row["reviewstream"]["latency_ms"], row["peer"]["latency_ms"]
        clean = not row["reviewstream"]["errors"]
        if what == "p50":
            diff = row["p50_diff_ms"]
            met = diff is not None and abs(diff) <= P50_TOLERANCE_MS and clean
            who = f"{followers} follower" + ("" if followers == 1 else "s")
            text = f"{mode} p50 within {P50_TOLERANCE_MS:g} ms of the peer's at {who}"
            figure = f"{fmt(ours['p50'], 2)} vs {fmt(peer['p50'], 2)} ms"
        else:
            met = row["p99_ratio"] is not None and row["p99_ratio"] <= 1.0 and clean
            text = f"{mode} p99 at or below the peer's at {followers} followers"
            figure = f"{fmt(ours['p99'], 1)} vs {fmt(peer['p99'], 1)} ms"
        verdicts.append({"target": text, "figure": figure, "met": met})
    return verdicts


async def run_side_by_side(
    options: BenchOptions, peer: Peer, install: Install, progress: Progress
) -> dict[str, Any]:
    """Run every load on both systems; returns the results document (see ``table``)."""
    started = time.monotonic()
    ran_on = machine(None if options.url or options.redis_url else await redis_version())
    config = ServerConfig(options.fanout_rate, 0.0, options.first_token_ms)
    loads = [(n, *split_load(n, options.per_job)) for n in options.followers]
    modes = options.modes
    total = 2 * len(modes) * (options.warmup + len(loads) * options.repeat)
    count = itertools.count(1)
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []

    def step(what: str) -> None:
        progress(f"[{next(count):>3}/{total}] {what}")

    def scenario(mode: str, jobs: int, per_job: int, group: str) -> Scenario:
        return Scenario(
            group, "alone", config, (mode,), jobs, per_job, options.fanout_poll_interval,
            options.length_words,
        )  # fmt: skip

    def brief(summary: dict[str, Any], mode: str) -> str:
        m = summary["modes"][mode]
        cpu = summary.get("server_cpu_pct")
        return (
            f"p50 {m['latency_ms']['p50']:.2f} p99 {m['latency_ms']['p99']:.1f} ms, "
            f"server CPU {fmt(cpu, 0)}%, {m['errors']} errors"
        )

    def sub(line: str) -> None:
        progress(f"        {line}")

    ours_log = "side-by-side-reviewstream.log"
    peer_log = options.output / "logs" / f"side-by-side-{peer.NAME}.log"
    async with (
        system_for(options, config, ours_log) as ours,
        peer.started(install, peer_log) as theirs,
    ):
        tokens = await job_tokens(ours, options.length_words)
        progress(
            f"the job: {len(tokens)} tokens; {peer.PACKAGE}@{install.version} at {theirs.base_url}"
        )
        for i, mode in itertools.product(range(options.warmup), modes):
            warm = scenario(mode, 1, 1, "warm-up")
            step(f"warm-up {i + 1}/{options.warmup}, {mode}: reviewstream, discarded")
            await run_scenario(warm, ours, seed=10_000 + i)
            step(f"warm-up {i + 1}/{options.warmup}, {mode}: {peer.NAME}, discarded")
            await peer.run_load(warm, theirs, tokens, tag=f"warm{i}-{mode}", seed=10_000 + i)
        for (n, jobs, per_job), mode in itertools.product(loads, modes):
            load = scenario(mode, jobs, per_job, "side-by-side")
            ours_runs, peer_runs = [], []
            for rep in range(options.repeat):
                label = f"{mode}, {n} followers ({jobs} jobs x {per_job}), rep {rep + 1}"
                step(f"{label}: reviewstream")
                run = await run_scenario(load, ours, seed=rep, progress=sub)
                ours_runs.append(run_summary(run))
                sub(brief(ours_runs[-1], mode))
                step(f"{label}: {peer.NAME}")
                peer_run = await peer.run_load(
                    load, theirs, tokens, tag=f"{mode}-{n}-{rep}", seed=rep, progress=sub
                )
                summary = run_summary(peer_run)
                if peer_run.append_ms:
                    summary["append_ms"] = latency_summary(peer_run.append_ms)
                peer_runs.append(summary)
                sub(brief(summary, mode))
            row = compare(
                mode, n, jobs, per_job,
                _side(combine(ours_runs), mode, len(tokens)),
                _side(combine(peer_runs), mode, len(tokens)),
            )  # fmt: skip
            warnings += _doubts(row, len(tokens))
            rows.append(row)
    if source_fingerprint() != ran_on["source_fingerprint"]:
        warnings.append("the server's source changed during the run: its figures mix two versions")
    return {
        "peer": peer.describe(install),
        "tokens_per_job": len(tokens),
        "loads": rows,
        "targets": judge(rows),
        "notes": [*NOTES, *peer.NOTES, RATIO_NOTE],
        "machine": ran_on,
        "config": {
            **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
            "peer": peer.NAME,
            "peer_dir": str(install.directory),
            "peer_version": install.version,
            "server": asdict(config),
        },
        "duration_s": time.monotonic() - started,
        "warnings": warnings,
    }


def table(results: dict[str, Any]) -> str:
    """The side-by-side results as text."""
    config = results["config"]
    peer = PEERS[results["peer"]["name"]]
    runs = "one run" if config["repeat"] == 1 else f"medians of {config['repeat']} runs"
    head = (
        f"Side by side with {peer.title(results['peer'])}: {config['fanout_rate']:g} tokens/s, "
        f"{results['tokens_per_job']} tokens per job, {config['per_job']} followers per job, "
        f"followers attached before the first token, the same client; {runs} each. "
        "Ratio = reviewstream / peer."
    )
    header = [
        "mode", "followers", "jobs", "rs p50", "rs p99", "peer p50", "peer p99", "p50 ratio",
        "p99 ratio", "rs err", "peer err", "rs CPU%", "redis CPU%", "peer CPU%", "client CPU%",
    ]  # fmt: skip
    rows = []
    for r in results["loads"]:
        ours, other = r["reviewstream"], r["peer"]
        rows.append(
            [
                r["mode"], fmt(r["followers"], 0), fmt(r["jobs"], 0),
                fmt(ours["latency_ms"]["p50"], 2), fmt(ours["latency_ms"]["p99"], 1),
                fmt(other["latency_ms"]["p50"], 2), fmt(other["latency_ms"]["p99"], 1),
                fmt(r["p50_ratio"], 2), fmt(r["p99_ratio"], 2),
                fmt(ours["errors"], 0), fmt(other["errors"], 0),
                fmt(ours["server_cpu_pct"], 0), fmt(ours["redis_cpu_pct"], 0),
                fmt(other["server_cpu_pct"], 0),
                f"{fmt(ours['client_cpu_pct'], 0)} / {fmt(other['client_cpu_pct'], 0)}",
            ]
        )  # fmt: skip
    parts = [head, grid(header, rows)]
    parts.append(
        "\nCPU per produced token, µs, by process kind (reviewstream: its API processes, its"
        " worker processes, its Redis; the peer: its server process, its Redis, if any):"
    )
    header = ["mode", "followers", *(f"rs {k}" for k in CPU_KINDS), "peer server", "peer redis"]
    rows = []
    for r in results["loads"]:
        ours, other = (
            r["reviewstream"]["cpu_us_per_produced_token"],
            r["peer"]["cpu_us_per_produced_token"],
        )
        rows.append(
            [r["mode"], fmt(r["followers"], 0), *(fmt(ours[k], 0) for k in CPU_KINDS),
             fmt(other["api"], 0), fmt(other["redis"], 0), fmt(other["total"], 0),
             fmt(_ratio(ours["total"], other["total"]), 2)]
        )  # fmt: skip
    parts.append(grid([*header, "peer total", "total ratio"], rows))
    appends = [
        f"{r['mode']} {r['followers']}: p50 {fmt(r['peer']['append_ms']['p50'], 2)} "
        f"p99 {fmt(r['peer']['append_ms']['p99'], 1)}"
        for r in results["loads"]
        if r["peer"].get("append_ms")
    ]
    if appends:
        parts.append("The peer's append round trip, ms (inside its latency): " + "; ".join(appends))
    if results["targets"]:
        parts.append("\nIssue 12's targets (met only with no errors on reviewstream's side):")
        parts += [
            f"  {'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['figure']}"
            for t in results["targets"]
        ]
    parts.append("\nNotes:")
    parts += [f"  - {n}" for n in results["notes"]]
    machine = results["machine"]
    parts.append(
        f"\nMachine: {machine['cpu']}, {machine['logical_cpus']} CPUs; {machine['os']}; "
        f"Python {machine['python']}; redis-server {machine['redis_server'] or 'remote'}. "
        f"Took {results['duration_s']:.0f} s."
    )
    parts += [f"WARNING: {w}" for w in results.get("warnings", [])]
    return "\n".join(parts)


# -- main ----------------------------------------------------------------------------------


async def main(options: BenchOptions, peer: Peer, peer_dir: Path, version: str) -> int:
    """Install the peer, run every load on both sides, write and print the results."""
    try:
        install = await peer.ensure_installed(peer_dir, version, say)
    except PeerUnavailable as e:
        print(e, file=sys.stderr)
        return 2
    results = await run_side_by_side(options, peer, install, say)
    results["config"]["command"] = command()
    text = table(results)
    write_json(results, options.output / RESULTS_NAME)
    (options.output / TABLE_NAME).write_text(text + "\n")
    print(text, flush=True)
    say(f"wrote {options.output / RESULTS_NAME} and {options.output / TABLE_NAME}")
    smallest = min(options.followers)
    errors = sum(
        int(row[side]["errors"] or 0)
        for row in results["loads"]
        if row["followers"] == smallest
        for side in ("reviewstream", "peer")
    )
    if errors:
        say(f"the {smallest}-follower loads had {errors} errors")
        return 1
    return 0


def start(argv: list[str] | None = None) -> NoReturn:
    """Parse ``argv``; exit 2 at once when the peer's tools are missing, else run."""
    options, peer, peer_dir, version = options_from_args(parser().parse_args(argv))
    missing = peer.missing_tools(peer_dir, version)
    if missing:
        print(peer.missing_message(missing, version), file=sys.stderr)
        sys.exit(2)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    options.output.mkdir(parents=True, exist_ok=True)
    limit = raise_open_files_limit()
    say(f"side by side with {peer.NAME}: output to {options.output}/ (open-files limit {limit})")
    run(main(options, peer, peer_dir, version))


if __name__ == "__main__":
    start()
