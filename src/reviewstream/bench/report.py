"""The results as people and programs read them: a text table, ``results.json`` and a chart.

``results.json`` holds, besides ``machine`` and ``config``: ``modes`` (the headline: one
follower per mode, each mode alone; every entry has ``latency_ms`` {p50, p95, p99, max},
``ttft_ms``, ``e2e_ms``, ``requests_per_job``, ``bytes_per_job``, ``errors`` and the server's
costs), ``together`` (the same modes following the same job at once), ``short_poll_intervals``,
``fanout`` (per mode, per follower count), ``breakdown``, ``coalesce``, ``producing`` (the
cost of producing tokens with nobody following), ``memory`` and ``sweeps`` (every scenario,
in full). Each run alone, each fan-out row and each baseline has ``cpu_us_per_produced_token``:
microseconds of CPU per produced token by process kind, ``api``, ``worker``, ``redis`` and
``total`` (``stats.cpu_per_produced_token``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

CHART_NAME = "chart.png"
CPU_KINDS = ("api", "worker", "redis", "total")  # results.json's cpu_us_per_produced_token
COLOURS = {
    "short_poll": "#c44e52",
    "long_poll": "#dd8452",
    "sse": "#4c72b0",
    "websocket": "#55a868",
}


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 4)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_json(results: dict[str, Any], path: Path) -> None:
    """Write ``results`` as JSON (NaN as null, floats to 4 decimals)."""
    path.write_text(json.dumps(_clean(results), indent=1) + "\n")


def fmt(value: Any, digits: int = 1) -> str:
    """A figure for a table: thousands separated, ``-`` for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def grid(header: list[str], rows: list[list[str]]) -> str:
    """A text table: the first column left-aligned, the others right-aligned."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    line = "  ".join(
        h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))
    )
    out = [line, "-" * len(line)]
    for r in rows:
        out.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(out)


_MODE_HEADER = [
    "mode", "p50 ms", "p95 ms", "p99 ms", "max ms", "TTFT ms", "E2E ms", "req/job", "KB/job",
    "CPU s/1k tok", "Redis cmd/tok", "errors",
]  # fmt: skip


def _mode_row(name: str, m: dict[str, Any]) -> list[str]:
    lat = m["latency_ms"]
    return [
        name, fmt(lat["p50"], 2), fmt(lat["p95"], 2), fmt(lat["p99"], 2), fmt(lat["max"], 1),
        fmt(m.get("ttft_ms"), 0), fmt(m.get("e2e_ms"), 0), fmt(m.get("requests_per_job"), 1),
        fmt(m["bytes_per_job"] / 1024 if m.get("bytes_per_job") is not None else None, 1),
        fmt(m.get("cpu_s_per_1k_tokens"), 3), fmt(m.get("redis_cmds_per_token"), 2),
        fmt(m.get("errors"), 0),
    ]  # fmt: skip


def _coalesce_row(r: dict[str, Any]) -> list[str]:
    lat = r["latency_ms"]
    return [
        r["mode"], fmt(r["coalesce_ms"], 0), fmt(r["rate"], 0), fmt(r["followers"], 0),
        fmt(lat["p50"], 2), fmt(lat["p99"], 1), fmt(r.get("requests_per_job"), 1),
        fmt(r.get("messages_per_job"), 1), fmt(r.get("cpu_s_per_1k_tokens"), 3),
        fmt(r.get("errors"), 0),
    ]  # fmt: skip


def _memory_row(kind: str, m: dict[str, Any]) -> list[str]:
    return [
        kind, fmt(m["connections"], 0), fmt(m["kb_per_connection"], 1),
        fmt(m["rss_before_mb"], 0), fmt(m["rss_after_mb"], 0), fmt(m["connect_ms_p50"], 1),
        fmt(m["connect_ms_p99"], 1), fmt(m["server_cpu_ms_per_connect"], 2),
        fmt(m["errors"], 0),
    ]  # fmt: skip


def table(results: dict[str, Any]) -> str:
    """The results as text tables (stdout)."""
    config = results["config"]
    parts = []
    if results["modes"]:
        parts.append(
            f"Headline: 1 follower per mode, each alone, {config['rate']:g} tokens/s, "
            f"short poll every {config['poll_intervals'][0]:g} s "
            f"(medians of {config['repeat']} runs; CPU and Redis net of producing the job)"
        )
        parts.append(grid(_MODE_HEADER, [_mode_row(k, v) for k, v in results["modes"].items()]))
    if results["together"]:
        parts.append("\nAll modes following the same job at once:")
        parts.append(grid(_MODE_HEADER, [_mode_row(k, v) for k, v in results["together"].items()]))
    if len(results["short_poll_intervals"]) > 1:
        parts.append("\nShort poll by interval:")
        rows = [
            [f"every {r['poll_interval']:g} s", *_mode_row("", r)[1:]]
            for r in results["short_poll_intervals"]
        ]
        parts.append(grid(["interval", *_MODE_HEADER[1:]], rows))
    fan_rows = []
    for mode, rows in results["fanout"].items():
        for r in rows:
            fan_rows.append(
                [
                    mode, fmt(r["followers"], 0), fmt(r["latency_ms"]["p50"], 2),
                    fmt(r["latency_ms"]["p99"], 1), fmt(r["latency_ms"]["max"], 0),
                    fmt((r.get("latency_live_ms") or {}).get("p99"), 1),
                    fmt(r.get("e2e_ms"), 0), fmt(r.get("requests_per_job"), 1),
                    fmt(r.get("cpu_s_per_1k_tokens"), 3), fmt(r.get("redis_cmds_per_token"), 2),
                    fmt(r.get("server_cpu_pct"), 0), fmt(r.get("client_cpu_pct"), 0),
                    fmt(r.get("errors"), 0),
                ]
            )  # fmt: skip
    if any(r["followers"] > 1 for rows in results["fanout"].values() for r in rows):
        rate, per_job = config["fanout_rate"], config["per_job"]
        processes = config.get("processes", 1)
        parts.append(
            f"\nFan-out at {rate:g} tokens/s ({per_job} followers per job; {processes} API"
            f" process{'es' if processes != 1 else ''}; live p99: only tokens appended after the"
            " follower connected, without a connect burst's backlog; server CPU: all its"
            " processes; client CPU: the benchmark's own):"
        )
        header = [
            "mode", "followers", "p50 ms", "p99 ms", "max ms", "live p99", "E2E ms", "req/job",
            "CPU s/1k tok", "Redis cmd/tok", "server CPU%", "client CPU%", "errors",
        ]  # fmt: skip
        parts.append(grid(header, fan_rows))
        verdicts = []
        for mode, v in results["breakdown"].items():
            where = f"breaks at {v['followers']} ({v['reason']})" if v["followers"] else "holds"
            verdicts.append(f"  {mode}: {where}")
        parts.append("Breakdown (p99 over the limit or any error):\n" + "\n".join(verdicts))
    if results["coalesce"]:
        parts.append("\nCoalescing window:")
        header = [
            "mode", "window ms", "tok/s", "followers", "p50 ms", "p99 ms", "req/job", "msg/job",
            "CPU s/1k tok", "errors",
        ]  # fmt: skip
        parts.append(grid(header, [_coalesce_row(r) for r in results["coalesce"]]))
    producing = results.get("producing")
    if producing and producing.get("redis_commands_per_appended_token") is not None:
        by_name = producing.get("redis_commands_per_appended_token_by_name") or {}
        top = sorted(by_name.items(), key=lambda kv: -kv[1])[:6]
        parts.append(
            f"\nProducing (nobody following): "
            f"{fmt(producing['redis_commands_per_appended_token'], 2)} Redis commands per "
            f"appended token ({', '.join(f'{k} {v:.2f}' for k, v in top)})"
        )
    cpu_runs = [(f"{m} alone, 1 follower", e) for m, e in results["modes"].items()]
    cpu_runs += [
        (f"{m} alone, {r['followers']:,} followers", r)
        for m, rows in results["fanout"].items()
        for r in rows
        if r["followers"] > 1
    ]
    cpu_runs += [(f"nobody following, {int(b['jobs']):,} job(s)", b) for b in results["baselines"]]
    if cpu_runs:
        parts.append(
            "\nCPU per produced token, µs, by process kind (producing and delivering; API: the"
            " server's processes but its worker processes; Redis: INFO cpu):"
        )
        header = ["run", *(f"{kind} µs/tok" for kind in CPU_KINDS)]
        rows = [
            [name, *(fmt((e.get("cpu_us_per_produced_token") or {}).get(k), 0) for k in CPU_KINDS)]
            for name, e in cpu_runs
        ]
        parts.append(grid(header, rows))
    if results.get("memory"):
        parts.append("\nIdle connections (one server process):")
        header = [
            "kind", "open", "KB each", "RSS before MB", "RSS after MB", "connect p50 ms",
            "connect p99 ms", "CPU ms/connect", "errors",
        ]  # fmt: skip
        parts.append(grid(header, [_memory_row(k, m) for k, m in results["memory"].items()]))
    machine = results["machine"]
    redis_version = machine["redis_server"] or "unknown (remote)"
    parts.append(
        f"\nMachine: {machine['cpu']}, {machine['logical_cpus']} CPUs, {machine['memory_gb']} GB; "
        f"{machine['os']}; Python {machine['python']}; redis-server {redis_version}. "
        f"Took {results['duration_s']:.0f} s."
    )
    parts += [f"WARNING: {w}" for w in results.get("warnings", [])]
    return "\n".join(parts)


def chart(results: dict[str, Any], path: Path) -> None:
    """A PNG: latency distribution per mode, cost per mode, and latency and CPU by fan-out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    (dist, cost), (fan, cpu) = axes
    modes = results["modes"]

    for mode, m in modes.items():
        grid = m.get("latency_quantiles_ms") or []
        if grid:
            dist.plot(
                [max(v, 1e-3) for v in grid], range(len(grid)), label=mode, color=COLOURS.get(mode)
            )
    if modes:
        dist.set_xscale("log")
    dist.set_xlabel("delivery latency per token, ms (log)")
    dist.set_ylabel("percentile")
    dist.set_title(
        f"Latency distribution, 1 follower per mode, {results['config']['rate']:g} tok/s"
    )
    dist.grid(True, which="both", alpha=0.3)
    if modes:
        dist.legend()

    names = list(modes)
    xs = range(len(names))
    kb = [modes[n]["bytes_per_job"] / 1024 for n in names]
    bars = cost.bar(xs, kb, color=[COLOURS.get(n) for n in names])
    for bar, n in zip(bars, names, strict=True):
        where = (bar.get_x() + bar.get_width() / 2, bar.get_height())
        label = f"{modes[n]['requests_per_job']:.0f} req/job"
        cost.annotate(label, where, ha="center", va="bottom", fontsize=8)
    cost.set_xticks(list(xs), names)
    cost.set_ylabel("KB on the wire per follower per job")
    cost.set_title("Cost per mode (bars: KB/job; labels: requests; CPU: below right)")
    cost.margins(y=0.25)

    for mode, rows in results["fanout"].items():
        if not rows:
            continue
        colour, n = COLOURS.get(mode), [r["followers"] for r in rows]
        for q, style, alpha in (("p99", "o-", 1.0), ("p50", "x--", 0.6)):
            latency = [r["latency_ms"][q] for r in rows]
            fan.plot(n, latency, style, color=colour, alpha=alpha, label=f"{mode} {q}")
        # One follower's delivery costs less than the noise of producing its job: from 10 on.
        cpu_rows = [r for r in rows if r["followers"] >= 10] or rows
        c = [r.get("cpu_s_per_1k_tokens") for r in cpu_rows]
        if any(v is not None for v in c):
            xs_cpu = [r["followers"] for r in cpu_rows]
            cpu.plot(
                xs_cpu, [math.nan if v is None else v for v in c], "o-", color=colour, label=mode
            )
    fan.axhline(50, color="grey", linestyle=":", label="50 ms target")
    if any(results["fanout"].values()):
        fan.set_xscale("log")
        fan.set_yscale("log")
        cpu.set_xscale("log")
    fan.set_xlabel("followers per mode")
    fan.set_ylabel("delivery latency, ms (log)")
    fan.set_title(f"Fan-out at {results['config']['fanout_rate']:g} tok/s, each mode alone")
    fan.grid(True, which="both", alpha=0.3)
    fan.legend(fontsize=7, ncol=2)
    cpu.set_xlabel("followers per mode")
    cpu.set_ylabel("server CPU s per 1,000 delivered tokens (net)")
    cpu.set_title("Server CPU per delivered token by fan-out")
    cpu.grid(True, which="both", alpha=0.3)
    if cpu.get_legend_handles_labels()[0]:
        cpu.legend(fontsize=8)

    machine = results["machine"]
    fig.suptitle(
        f"reviewstream bench — {machine['logical_cpus']} CPUs ({machine['cpu']}), loopback, "
        f"simulated model, medians of {results['config']['repeat']} runs",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
