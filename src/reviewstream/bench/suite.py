"""The whole benchmark: every scenario of the plan, its repetitions, and the results document.

For each server configuration the suite starts a fresh redis-server and server (or uses the
one at ``--url``), runs a discarded warm-up, then each scenario ``repeat`` times; figures are
medians over the repetitions. Costs are put net of the baseline run with the same jobs.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..processes.redis_server import redis_server_binary
from . import memory
from .machine import describe, source_fingerprint
from .plan import BenchOptions, Scenario, ServerConfig, baseline_for, build_plan
from .report import fmt
from .runner import run_scenario
from .server import System, remote_system, started_system
from .stats import add_costs, combine, pooled_quantiles, run_summary

Progress = Callable[[str], None]
# The delivery target at fan-out (ms); short polls get their interval on top.
FANOUT_P99_TARGET_MS = 50.0


def stderr_progress(message: str) -> None:
    """Print a progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


@dataclass
class Record:
    """A scenario and its figures (medians over repetitions)."""

    scenario: Scenario
    summary: dict[str, Any]
    repetitions: int


def system_for(
    options: BenchOptions, config: ServerConfig, log_name: str | None = None
) -> AbstractAsyncContextManager[System]:
    """The server under test with ``config``: started as the options say, or the one at
    ``--url``; a started server's log is kept as ``logs/<log_name>`` under ``--output``."""
    if options.url:
        return remote_system(options.url)
    log_name = log_name or f"server-{config.rate:g}tps-coalesce{config.coalesce_ms:g}ms.log"
    return started_system(
        config,
        worker_concurrency=options.concurrency,
        keep_log=options.output / "logs" / log_name,
        processes=options.processes,
        redis_url=options.redis_url,
        redis_cluster=options.redis_cluster,
        queue_shards=options.queue_shards,
    )


def _brief(summary: dict[str, Any]) -> str:
    lat = [(mode, m["latency_ms"]) for mode, m in summary["modes"].items()]
    errors = sum(m["errors"] for m in summary["modes"].values()) + summary["errors"]
    parts = [f"{mode} p50 {q['p50']:.1f} p99 {q['p99']:.1f} ms" for mode, q in lat]
    cpu = summary["cpu_us_per_produced_token"]["total"]
    return "; ".join([*parts, f"{fmt(cpu, 0)} µs CPU per produced token", f"{errors} errors"])


async def _run_group(
    options: BenchOptions,
    config: ServerConfig,
    scenarios: list[Scenario],
    counter: Callable[[], str],
    progress: Progress,
) -> AsyncIterator[Record]:
    async with system_for(options, config) as system:
        warm = replace(
            scenarios[0], group="warm-up", kind="together", modes=options.modes, jobs=1, per_job=1
        )
        for i in range(options.warmup):
            progress(f"{counter()} warm-up {i + 1}/{options.warmup} ({config.label}), discarded")
            await run_scenario(warm, system, seed=10_000 + i)
        for scenario in scenarios:
            summaries, runs = [], []
            for rep in range(options.repeat):
                progress(f"{counter()} {scenario.label}: rep {rep + 1}/{options.repeat}")
                started = time.monotonic()
                run = await run_scenario(
                    scenario, system, seed=rep, progress=lambda s: progress(f"        {s}")
                )
                summary = run_summary(run)
                progress(f"        {time.monotonic() - started:.1f} s: {_brief(summary)}")
                summaries.append(summary)
                runs.append(run)
            combined = combine(summaries)
            for mode in scenario.modes:
                combined["modes"][mode]["latency_quantiles_ms"] = pooled_quantiles(runs, mode)
            del runs
            yield Record(scenario, combined, options.repeat)


async def run_suite(options: BenchOptions, progress: Progress = stderr_progress) -> dict[str, Any]:
    """Run the plan of ``options``; returns the results document (see ``report``)."""
    started = time.monotonic()
    machine = describe(None if options.url or options.redis_url else await redis_version())
    plan = build_plan(options)
    if options.url:
        # No CPU or Redis figures to net out, and no restart to change the coalescing window:
        # the server's own rate and window apply to every scenario.
        plan = [s for s in plan if s.kind != "baseline" and s.group != "coalesce"]
        progress("--url: the server's own token rate and coalescing window apply throughout")
    groups = [(k, list(v)) for k, v in itertools.groupby(plan, key=lambda s: s.server)]
    total = sum(options.warmup + len(g) * options.repeat for _, g in groups)
    count = itertools.count(1)

    def counter() -> str:
        return f"[{next(count):>3}/{total}]"

    records: list[Record] = []
    for config, scenarios in groups:
        async for record in _run_group(options, config, scenarios, counter, progress):
            records.append(record)
    by_scenario = {id(r.scenario): r for r in records}
    for record in records:
        base = baseline_for(plan, record.scenario)
        base_record = by_scenario.get(id(base)) if base is not None else None
        if record.scenario.kind == "baseline":
            add_costs(record.summary, None)
        else:
            add_costs(record.summary, base_record.summary if base_record else None)
    mem = None
    if options.memory and not options.url:
        progress(f"memory probe: {options.memory_connections} idle connections per kind")
        mem = await memory.probe_all(options.memory_connections, progress)
    results = assemble(options, records, mem, machine, time.monotonic() - started)
    if source_fingerprint() != machine["source_fingerprint"]:
        warning = "the server's source changed during the run: its figures mix two versions"
        progress(f"WARNING: {warning}")
        results["warnings"].append(warning)
    return results


async def redis_version() -> str | None:
    """The version of the redis-server the benchmark starts."""
    proc = await asyncio.create_subprocess_exec(
        redis_server_binary(), "--version", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    for part in out.decode().split():
        if part.startswith("v="):
            return part[2:]
    return None


def _scenario_dict(s: Scenario) -> dict[str, Any]:
    d = asdict(s)
    d["followers"] = s.followers
    d["label"] = s.label
    return d


def assemble(
    options: BenchOptions,
    records: list[Record],
    mem: dict[str, Any] | None,
    machine: dict[str, Any],
    duration: float,
) -> dict[str, Any]:
    """The results document: headline modes, every scenario, derived tables, machine, config."""
    head = ServerConfig(
        options.rate,
        0.0 if 0.0 in options.coalesce_ms else options.coalesce_ms[0],
        options.first_token_ms,
    )
    fan = replace(head, rate=options.fanout_rate)
    modes: dict[str, Any] = {}
    together: dict[str, Any] = {}
    intervals: list[dict[str, Any]] = []
    fanout: dict[str, list[dict[str, Any]]] = {m: [] for m in options.modes}
    coalesce: list[dict[str, Any]] = []
    baselines: list[dict[str, Any]] = []
    for r in records:
        s, summary = r.scenario, r.summary
        if s.kind == "baseline":
            baselines.append({"scenario": _scenario_dict(s), **_costs_only(summary)})
            continue
        if s.group == "headline" and s.kind == "alone":
            modes[s.modes[0]] = summary["modes"][s.modes[0]]
        if s.group == "headline" and s.kind == "together":
            together = summary["modes"]
        if s.kind == "alone" and s.modes == ("short_poll",) and s.server == head:
            if s.followers == 1:
                intervals.append({"poll_interval": s.poll_interval, **_row(summary, "short_poll")})
        if s.kind == "alone" and s.server == fan:
            mode = s.modes[0]
            if mode != "short_poll" or s.poll_interval == options.fanout_poll_interval:
                fanout[mode].append({"followers": s.followers, **_row(summary, mode)})
        if s.group == "coalesce":
            for mode in s.modes:
                coalesce.append(
                    {
                        "coalesce_ms": s.server.coalesce_ms,
                        "rate": s.server.rate,
                        "followers": s.followers,
                        "kind": s.kind,
                        "mode": mode,
                        **_row(summary, mode),
                    }
                )
    for rows in fanout.values():
        rows.sort(key=lambda row: row["followers"])
    head_base = next(
        (
            b
            for b in baselines
            if b["scenario"]["server"] == asdict(head) and b["scenario"]["jobs"] == 1
        ),
        None,
    )
    return {
        "modes": modes,
        "together": together,
        "short_poll_intervals": sorted(intervals, key=lambda row: row["poll_interval"]),
        "fanout": fanout,
        "breakdown": breakdown(fanout, options.fanout_poll_interval),
        "coalesce": coalesce,
        "producing": head_base,
        "baselines": baselines,
        "memory": mem,
        "sweeps": [
            {"scenario": _scenario_dict(r.scenario), "repetitions": r.repetitions, **r.summary}
            for r in records
        ],
        "machine": machine,
        "config": {**asdict(options), "output": str(options.output)},
        "duration_s": duration,
        "warnings": [],
    }


_ROW_KEYS = (
    "followers", "ttft_ms", "e2e_ms", "e2e_ms_max", "connect_ms", "connect_ms_max",
    "requests_per_job", "messages_per_job", "bytes_per_job", "errors", "lost", "duplicated",
    "cpu_s_per_1k_tokens", "cpu_s_per_1k_tokens_gross", "redis_cmds_per_token",
    "redis_cmds_per_token_gross", "redis_cpu_s_per_1k_tokens", "cpu_us_per_produced_token",
)  # fmt: skip


def _row(summary: dict[str, Any], mode: str) -> dict[str, Any]:
    entry = summary["modes"][mode]
    row = {k: entry.get(k) for k in _ROW_KEYS}
    row["latency_ms"] = {k: entry["latency_ms"][k] for k in ("p50", "p95", "p99", "max")}
    live = entry.get("latency_live_ms") or {}
    row["latency_live_ms"] = {k: live.get(k) for k in ("p50", "p95", "p99", "max")}
    row["history_tokens"] = entry.get("history_tokens")
    row["server_cpu_pct"] = summary.get("server_cpu_pct")
    row["client_cpu_pct"] = summary.get("client_cpu_pct")
    for key in ("cpu_s_per_1k_tokens", "cpu_s_per_1k_tokens_gross", "redis_cmds_per_token"):
        if row.get(key) is None:
            row[key] = summary.get(key)
    return row


def _costs_only(summary: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "duration_s", "jobs", "appended_tokens", "server_cpu_s", "server_cpu_pct", "worker_cpu_s",
        "redis_cpu_s", "cpu_us_per_produced_token",
        "redis_commands", "server_cpu_s_per_1k_appended", "redis_cpu_s_per_1k_appended",
        "redis_commands_per_appended_token", "redis_commands_per_appended_token_by_name",
    )  # fmt: skip
    return {k: summary.get(k) for k in keys}


def breakdown(fanout: dict[str, list[dict[str, Any]]], poll_interval: float) -> dict[str, Any]:
    """Per mode: the first follower count where p99 misses the target or errors appear."""
    out: dict[str, Any] = {}
    for mode, rows in fanout.items():
        limit = FANOUT_P99_TARGET_MS + (poll_interval * 1000 if mode == "short_poll" else 0)
        verdict: dict[str, Any] = {"p99_limit_ms": limit, "followers": None, "reason": None}
        for row in rows:
            p99 = row["latency_ms"]["p99"]
            if row["errors"]:
                verdict.update(followers=row["followers"], reason=f"{row['errors']} errors")
                break
            if p99 is not None and p99 > limit:
                verdict.update(followers=row["followers"], reason=f"p99 {p99:.0f} ms")
                break
        out[mode] = verdict
    return out
