"""From runs to figures: percentiles, per-mode summaries, medians over repetitions, and the
server's costs per token with the cost of producing the jobs (a baseline run) taken out.

Units: latencies and times in milliseconds, CPU in seconds, bytes as counted on the wire by the
benchmark's client (see ``conn``). "Per job" means per follower per job: what one client needs
to follow one job from its first token to its end.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from .followers import Trace
from .runner import RunResult

# Counters that add up over repetitions (anything non-zero must show); the rest are medians.
SUMMED = frozenset(
    {"errors", "lost", "duplicated", "mismatched", "failures", "unfinished", "missing_ts"}
)


def quantile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values, interpolated linearly."""
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def latency_summary(values: Iterable[float]) -> dict[str, float]:
    """p50, p95, p99, max and mean of ``values``."""
    ordered = sorted(values)
    if not ordered:
        nan = float("nan")
        return {"p50": nan, "p95": nan, "p99": nan, "max": nan, "mean": nan, "n": 0}
    return {
        "p50": quantile(ordered, 0.50),
        "p95": quantile(ordered, 0.95),
        "p99": quantile(ordered, 0.99),
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
        "n": len(ordered),
    }


def quantile_grid(values: Iterable[float]) -> list[float]:
    """The 0th, 1st, ... 100th percentiles (for distribution charts)."""
    ordered = sorted(values)
    return [quantile(ordered, i / 100) for i in range(101)] if ordered else []


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def mode_summary(traces: Sequence[Trace], run_errors: int = 0) -> dict[str, Any]:
    """What the followers of one mode saw in one run."""
    n = max(len(traces), 1)
    ttft = [
        (t.first_token_at - t.job.posted_at) * 1000 for t in traces if t.first_token_at is not None
    ]
    e2e = [(t.end_at - t.job.posted_at) * 1000 for t in traces if t.end_at is not None]
    connect = sorted(t.connect_ms for t in traces if t.connect_ms is not None)
    messages: list[str] = []
    for t in traces:
        messages += [m for m in t.errors if m not in messages][:3]
    return {
        "followers": len(traces),
        "latency_ms": latency_summary(v for t in traces for v in t.latencies_ms),
        "latency_live_ms": latency_summary(v for t in traces for v in t.live_latencies_ms()),
        "history_tokens": sum(len(t.latencies_ms) - len(t.live_latencies_ms()) for t in traces),
        "ttft_ms": _median(ttft),
        "ttft_ms_max": max(ttft) if ttft else None,
        "e2e_ms": _median(e2e),
        "e2e_ms_max": max(e2e) if e2e else None,
        "connect_ms": quantile(connect, 0.5) if connect else None,
        "connect_ms_max": connect[-1] if connect else None,
        "requests_per_job": sum(t.requests for t in traces) / n,
        "messages_per_job": sum(t.messages for t in traces) / n,
        "bytes_per_job": sum(t.bytes_in + t.bytes_out for t in traces) / n,
        "bytes_in_per_job": sum(t.bytes_in for t in traces) / n,
        "bytes_out_per_job": sum(t.bytes_out for t in traces) / n,
        "delivered_tokens": sum(len(t.latencies_ms) + t.missing_ts for t in traces),
        "errors": sum(t.error_count for t in traces) + run_errors,
        "lost": sum(t.lost for t in traces),
        "duplicated": sum(t.duplicated for t in traces),
        "mismatched": sum(t.mismatched for t in traces),
        "failures": sum(len(t.errors) for t in traces),
        "unfinished": sum(1 for t in traces if not t.finished),
        "missing_ts": sum(t.missing_ts for t in traces),
        "error_messages": messages[:5],
    }


def _delta(after: float | None, before: float | None) -> float | None:
    return after - before if after is not None and before is not None else None


def run_summary(run: RunResult) -> dict[str, Any]:
    """One run: per-mode figures and what the system spent."""
    b, a = run.before, run.after
    commands = {k: v - b.commands.get(k, 0) for k, v in a.commands.items()}
    commands = {k: v for k, v in commands.items() if v}
    duration = run.duration_s
    server_cpu = _delta(a.server_cpu, b.server_cpu)
    worker_cpu = _delta(a.worker_cpu, b.worker_cpu)
    redis_cpu = _delta(a.redis_cpu, b.redis_cpu)
    client_cpu = a.client_cpu - b.client_cpu
    summary: dict[str, Any] = {
        "duration_s": duration,
        "jobs": run.scenario.jobs,
        "appended_tokens": run.appended_tokens,
        "delivered_tokens": run.delivered_tokens,
        "server_cpu_s": server_cpu,
        "server_cpu_pct": 100 * server_cpu / duration if server_cpu is not None else None,
        "worker_cpu_s": worker_cpu,
        "redis_cpu_s": redis_cpu,
        "cpu_us_per_produced_token": cpu_per_produced_token(
            server_cpu, worker_cpu, redis_cpu, run.appended_tokens
        ),
        "client_cpu_s": client_cpu,
        "client_cpu_pct": 100 * client_cpu / duration,
        "redis_commands": sum(commands.values()) if a.commands else None,
        "redis_commands_by_name": commands,
        "errors": len(run.errors),
        "error_messages": run.errors[:5],
        "modes": {},
    }
    for mode in run.scenario.modes:
        traces = [t for t in run.traces if t.mode == mode]
        summary["modes"][mode] = mode_summary(traces, len(run.errors))
    return summary


def cpu_per_produced_token(
    server: float | None, worker: float | None, redis: float | None, produced: int
) -> dict[str, float | None]:
    """Microseconds of CPU per produced (appended) token, by process kind: ``api`` (the server's
    processes but its worker processes), ``worker``, ``redis`` and ``total``, the sum of those
    measured (``None`` where not: ``worker`` when the API processes run the workers and count
    them, ``redis`` when it is not the benchmark's own or there is none)."""
    api = server - (worker or 0.0) if server is not None else None
    total = api + (worker or 0.0) + (redis or 0.0) if api is not None else None
    spent = {"api": api, "worker": worker, "redis": redis, "total": total}
    return {kind: _per(cpu, produced, 1e6) for kind, cpu in spent.items()}


def combine(summaries: Sequence[Any], key: str = "") -> Any:
    """Medians over repetitions, leaf by leaf (error counters are summed instead)."""
    first = summaries[0]
    if isinstance(first, dict):
        keys: list[str] = []
        for s in summaries:
            keys += [k for k in s if k not in keys]
        return {k: combine([s[k] for s in summaries if k in s], k) for k in keys}
    if isinstance(first, bool) or first is None or isinstance(first, str):
        return first
    if isinstance(first, int | float):
        values = [v for v in summaries if isinstance(v, int | float)]
        return sum(values) if key in SUMMED else statistics.median(values)
    if isinstance(first, list):
        merged: list[Any] = []
        for s in summaries:
            merged += [m for m in s if m not in merged]
        return merged[:5]
    return first


def pooled_quantiles(runs: Sequence[RunResult], mode: str) -> list[float]:
    """The latency distribution of ``mode`` over all repetitions together (for the chart)."""
    return quantile_grid(
        v for r in runs for t in r.traces if t.mode == mode for v in t.latencies_ms
    )


def _per(value: float | None, count: float, scale: float = 1.0) -> float | None:
    return value * scale / count if value is not None and count > 0 else None


def add_costs(summary: dict[str, Any], baseline: dict[str, Any] | None) -> None:
    """Costs per token: gross, and net of the baseline run (producing the same jobs unwatched).

    A baseline gets the cost of producing: per appended token. A run where one mode followed
    alone puts its net cost on that mode's entry too.
    """
    delivered = summary["delivered_tokens"]
    appended = summary["appended_tokens"]
    cpu, cmds = summary["server_cpu_s"], summary["redis_commands"]
    if not summary["modes"]:  # a baseline
        summary["server_cpu_s_per_1k_appended"] = _per(cpu, appended, 1000)
        summary["redis_cpu_s_per_1k_appended"] = _per(summary["redis_cpu_s"], appended, 1000)
        summary["redis_commands_per_appended_token"] = _per(cmds, appended)
        summary["redis_commands_per_appended_token_by_name"] = {
            k: v / appended for k, v in summary["redis_commands_by_name"].items() if appended
        }
        return
    costs: dict[str, float | None] = {
        "cpu_s_per_1k_tokens_gross": _per(cpu, delivered, 1000),
        "redis_cmds_per_token_gross": _per(cmds, delivered),
        "cpu_s_per_1k_tokens": None,
        "redis_cmds_per_token": None,
        "redis_cpu_s_per_1k_tokens": None,
    }
    if baseline is not None:
        base_cpu, base_cmds = baseline["server_cpu_s"], baseline["redis_commands"]
        if cpu is not None and base_cpu is not None:
            costs["cpu_s_per_1k_tokens"] = _per(cpu - base_cpu, delivered, 1000)
        if cmds is not None and base_cmds is not None:
            costs["redis_cmds_per_token"] = _per(cmds - base_cmds, delivered)
        r, base_r = summary["redis_cpu_s"], baseline["redis_cpu_s"]
        if r is not None and base_r is not None:
            costs["redis_cpu_s_per_1k_tokens"] = _per(r - base_r, delivered, 1000)
    summary.update(costs)
    if len(summary["modes"]) == 1:
        (entry,) = summary["modes"].values()
        entry.update(costs, cpu_us_per_produced_token=summary["cpu_us_per_produced_token"])
