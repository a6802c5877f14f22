"""``reviewstream bench``: options, defaults (``--quick`` fills in a small plan), and the run.

Progress goes to stderr, the table to stdout; ``results.json`` and ``chart.png`` go to
``--output``. The exit status is 1 when the headline runs (one follower per mode) had any error:
lost or duplicated tokens included. Errors at higher fan-out are findings, reported, not
failures of the command.

The side-by-side with peer servers (``benchmarks/side_by_side.py``) takes these same options and
reads them through ``options_from_args`` with defaults of its own.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from ..processes import loops
from ..wire import MODES
from .plan import MIN_CONCURRENCY, BenchOptions
from .report import CHART_NAME, chart, table, write_json
from .server import raise_open_files_limit
from .suite import run_suite, stderr_progress

T = TypeVar("T")

# What --quick changes (anything given explicitly still wins): the headline alone, shortened.
QUICK = {
    "followers": (1,),
    "repeat": 2,
    "poll_intervals": (0.25,),
    "coalesce_ms": (0.0,),
    "length_words": 50,
    "first_token_ms": 300.0,
}


def _list(convert: Callable[[str], T]) -> Callable[[str], tuple[T, ...]]:
    def parse(text: str) -> tuple[T, ...]:
        try:
            values = tuple(convert(part) for part in text.replace(" ", "").split(",") if part)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        return values

    return parse


def _modes(text: str) -> tuple[str, ...]:
    aliases = {"ws": "websocket", "short": "short_poll", "long": "long_poll", "poll": "short_poll"}
    modes = tuple(aliases.get(m, m) for m in _list(str)(text))
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown mode {unknown[0]!r}; choose from {', '.join(MODES)}"
        )
    return modes


DEFAULTS = BenchOptions(output=Path("out"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``reviewstream bench``."""
    d = DEFAULTS
    parser.description = (
        "Compare short poll, long poll, SSE and WebSocket on the same jobs: delivery latency, "
        "time to first token, requests, bytes, server CPU and Redis commands per token."
    )
    arg = parser.add_argument
    arg("--url", help="benchmark a running server instead of starting one")
    arg("--output", type=Path, default=d.output, help="where the results go (default: out/)")
    arg("--quick", action="store_true", help="a small plan that finishes in well under a minute")
    arg("--rate", type=float, help=f"tokens/s of the headline runs (default {d.rate:g})")
    arg(
        "--fanout-rate",
        type=float,
        help=f"tokens/s of the fan-out sweep (default {d.fanout_rate:g})",
    )
    arg("--followers", type=_list(int), help="followers per mode to sweep (default 1,10,100,1000)")
    arg(
        "--per-job",
        type=int,
        help=f"followers per job per mode (default {d.per_job}; 1000 = 100 jobs x 10)",
    )
    arg("--repeat", type=int, help=f"runs per scenario; medians reported (default {d.repeat})")
    arg("--warmup", type=int, help=f"discarded warm-up runs per server (default {d.warmup})")
    arg("--modes", type=_modes, help="modes to run (default all: " + ",".join(MODES) + ")")
    arg(
        "--poll-interval",
        dest="poll_intervals",
        type=_list(float),
        help="short-poll intervals in seconds; the first is the headline's (default 0.25,1,2)",
    )
    arg(
        "--fanout-poll-interval",
        type=float,
        help=f"short-poll interval in the fan-out sweep (default {d.fanout_poll_interval:g})",
    )
    arg("--coalesce-ms", type=_list(float), help="coalescing windows, 0 = off (default 0,50)")
    arg("--length-words", type=int, help=f"words per job, 50..1500 (default {d.length_words})")
    arg("--first-token-ms", type=float, help=f"simulated TTFT (default {d.first_token_ms:g})")
    arg(
        "--worker-concurrency",
        type=int,
        help="jobs a started server runs at once (REVIEWSTREAM_WORKER_CONCURRENCY; default: every"
        f" job of the largest load, at least {MIN_CONCURRENCY})",
    )
    arg(
        "--processes",
        type=int,
        help="API processes of the server the benchmark starts (serve --processes; default 1);"
        " its workers are placed as serve places them. Server CPU is all its processes'",
    )
    arg(
        "--redis-url",
        help="the Redis the started server uses instead of a private redis-server (any node of a"
        " cluster); each server start gets its own key prefix, left to expire by retention."
        " Redis commands are counted on every master (other clients' too); Redis CPU is unknown",
    )
    arg(
        "--redis-cluster",
        action="store_true",
        help="--redis-url is a Redis Cluster (REVIEWSTREAM_REDIS_CLUSTER)",
    )
    arg(
        "--queue-shards",
        type=int,
        help="queue shards of the started server (REVIEWSTREAM_QUEUE_SHARDS; default 1;"
        " on a cluster, at least its number of masters, so each holds a shard)",
    )
    arg("--memory", action="store_true", help="also probe idle SSE and WebSocket connections")
    arg(
        "--memory-connections",
        type=int,
        help=f"idle connections per kind for --memory (default {d.memory_connections})",
    )


def options_from_args(
    args: argparse.Namespace, defaults: Mapping[str, Any] | None = None
) -> BenchOptions:
    """Defaults, then ``defaults`` (a run other than the plan sets its own: the side-by-side in
    ``benchmarks/``), then ``--quick``'s, then what was given explicitly."""
    values: dict[str, Any] = {"output": args.output, "url": args.url, "quick": args.quick}
    values.update(defaults or {})
    if args.quick:
        values.update(QUICK)
    for name in (
        "rate", "fanout_rate", "followers", "per_job", "repeat", "warmup", "modes",
        "poll_intervals", "fanout_poll_interval", "coalesce_ms", "length_words",
        "first_token_ms", "worker_concurrency", "memory_connections", "processes",
        "redis_url", "queue_shards",
    ):  # fmt: skip
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    values["memory"] = bool(args.memory)
    values["redis_cluster"] = bool(getattr(args, "redis_cluster", False))
    if args.quick and defaults is None:
        # The quick plan sweeps nothing: its fan-out rows are the headline's own runs.
        values.setdefault("fanout_rate", values.get("rate", DEFAULTS.rate))
        values.setdefault("fanout_poll_interval", values["poll_intervals"][0])
    options = BenchOptions(**values)
    options = replace(options, worker_concurrency=options.concurrency)
    if not 50 <= options.length_words <= 1500:
        raise SystemExit("--length-words must be within 50..1500")
    if options.repeat < 1 or options.warmup < 0 or options.per_job < 1:
        raise SystemExit("--repeat and --per-job must be at least 1, --warmup at least 0")
    if options.processes < 1:
        raise SystemExit("--processes must be at least 1")
    if options.url and options.processes > 1:
        raise SystemExit("--processes is for a server the benchmark starts, not --url")
    if options.url and (options.redis_url or options.queue_shards != 1):
        raise SystemExit(
            "--redis-url and --queue-shards are for a server the benchmark starts, not --url"
        )
    if options.redis_cluster and not options.redis_url:
        raise SystemExit("--redis-cluster needs --redis-url (any node of the cluster)")
    if options.queue_shards < 1:
        raise SystemExit("--queue-shards must be at least 1")
    return options


def headline_errors(results: dict[str, Any]) -> int:
    """Errors of the headline and together runs (must be zero)."""
    entries = [*results["modes"].values(), *results["together"].values()]
    return sum(int(e.get("errors") or 0) for e in entries)


EXTRA_MISSING = (
    "reviewstream bench needs the bench extra: pip install 'reviewstream[bench]'"
    " (from a clone: pip install '.[bench]')"
)


def extra_installed() -> bool:
    """True when what only the benchmark uses (matplotlib, for its chart) is importable."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def run(args: argparse.Namespace) -> int:
    """Run the benchmark the arguments describe; print the table; write the results."""
    if not extra_installed():
        print(EXTRA_MISSING, file=sys.stderr)
        return 2
    options = options_from_args(args)
    for noisy in ("httpx", "httpcore", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    options.output.mkdir(parents=True, exist_ok=True)
    limit = raise_open_files_limit()
    stderr_progress(f"reviewstream bench: output to {options.output}/ (open-files limit {limit})")
    results = loops.run(run_suite(options))  # uvloop: less client CPU per message
    if sys.argv[1:2] == ["bench"]:
        results["config"]["command"] = " ".join(["reviewstream", *sys.argv[1:]])
    write_json(results, options.output / "results.json")
    chart(results, options.output / CHART_NAME)
    print(table(results), flush=True)
    stderr_progress(f"wrote {options.output / 'results.json'} and {options.output / CHART_NAME}")
    errors = headline_errors(results)
    if errors:
        stderr_progress(f"the headline runs had {errors} errors")
        return 1
    return 0
