"""``reviewstream bench``: options, defaults (``--quick`` fills in a small plan), and the run.

Progress goes to stderr, the table to stdout; ``results.json`` and ``chart.png`` go to
``--output``. The exit status is 1 when the headline runs (one follower per mode) had any error:
lost or duplicated tokens included. Errors at higher fan-out are findings, reported, not
failures of the command.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..wire import MODES
from .plan import BenchOptions
from .report import CHART_NAME, chart, table, write_json
from .server import raise_open_files_limit
from .suite import run_suite, stderr_progress

T = TypeVar("T")

# What --quick changes (anything given explicitly still wins): under a minute on 2 cores.
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
    parser.add_argument("--url", help="benchmark a running server instead of starting one")
    parser.add_argument(
        "--output",
        type=Path,
        default=d.output,
        help="where results.json and the chart go (default: out/)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small plan that finishes in well under a minute"
    )
    parser.add_argument(
        "--rate", type=float, help=f"tokens/s of the headline runs (default {d.rate:g})"
    )
    parser.add_argument(
        "--fanout-rate",
        type=float,
        help=f"tokens/s of the fan-out sweep (default {d.fanout_rate:g})",
    )
    parser.add_argument(
        "--followers", type=_list(int), help="followers per mode to sweep (default 1,10,100,1000)"
    )
    parser.add_argument(
        "--per-job",
        type=int,
        help=f"followers per job per mode (default {d.per_job}; 1000 = 100 jobs x 10)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help=f"repetitions per scenario; medians are reported (default {d.repeat})",
    )
    parser.add_argument(
        "--warmup", type=int, help=f"discarded warm-up runs per server (default {d.warmup})"
    )
    parser.add_argument(
        "--modes",
        type=_modes,
        help="modes to run (default all: short_poll,long_poll,sse,websocket)",
    )
    parser.add_argument(
        "--poll-interval",
        dest="poll_intervals",
        type=_list(float),
        help="short-poll intervals in seconds; the first is the headline's (default 0.25,1,2)",
    )
    parser.add_argument(
        "--fanout-poll-interval",
        type=float,
        help=f"short-poll interval in the fan-out sweep (default {d.fanout_poll_interval:g})",
    )
    parser.add_argument(
        "--coalesce-ms",
        type=_list(float),
        help="coalescing windows to compare, 0 = off (default 0,50)",
    )
    parser.add_argument(
        "--length-words",
        type=int,
        help=f"review length per job, 50..1500 (default {d.length_words})",
    )
    parser.add_argument(
        "--first-token-ms",
        type=float,
        help=f"simulated time to first token (default {d.first_token_ms:g})",
    )
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        help=f"jobs a started server runs at once (default {d.worker_concurrency})",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="also probe the memory of idle SSE and WebSocket connections",
    )
    parser.add_argument(
        "--memory-connections",
        type=int,
        help=f"idle connections per kind for --memory (default {d.memory_connections})",
    )


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """Defaults, then ``--quick``'s, then what was given explicitly."""
    values: dict[str, Any] = {"output": args.output, "url": args.url, "quick": args.quick}
    if args.quick:
        values.update(QUICK)
    for name in (
        "rate", "fanout_rate", "followers", "per_job", "repeat", "warmup", "modes",
        "poll_intervals", "fanout_poll_interval", "coalesce_ms", "length_words",
        "first_token_ms", "worker_concurrency", "memory_connections",
    ):  # fmt: skip
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    values["memory"] = bool(args.memory)
    if args.quick:
        # The quick plan sweeps nothing: its fan-out rows are the headline's own runs.
        values.setdefault("fanout_rate", values.get("rate", DEFAULTS.rate))
        values.setdefault("fanout_poll_interval", values["poll_intervals"][0])
    options = BenchOptions(**values)
    if not 50 <= options.length_words <= 1500:
        raise SystemExit("--length-words must be within 50..1500")
    if options.repeat < 1 or options.warmup < 0 or options.per_job < 1:
        raise SystemExit("--repeat and --per-job must be at least 1, --warmup at least 0")
    return options


def headline_errors(results: dict[str, Any]) -> int:
    """Errors of the headline and together runs (must be zero)."""
    entries = [*results["modes"].values(), *results["together"].values()]
    return sum(int(e.get("errors") or 0) for e in entries)


def _run_loop(options: BenchOptions) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(run_suite(options))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run_suite(options))


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
    results = _run_loop(options)
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
