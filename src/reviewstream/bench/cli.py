"""``reviewstream bench``: options, defaults (``--quick`` fills in a small plan), and the run.

Progress goes to stderr, the table to stdout; ``results.json`` and ``chart.png`` go to
``--output``. The exit status is 1 when the headline runs (one follower per mode) had any error:
lost or duplicated tokens included. Errors at higher fan-out are findings, reported, not
failures of the command.

``--peer durable-streams`` runs the side-by-side comparison instead (``side_by_side``):
``side_by_side.json`` and ``side_by_side.txt`` go to ``--output``; the exit status is 2 when the
peer cannot be installed or run (what is missing is said in one line), 1 when the smallest load
had errors on either side.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from ..wire import MODES
from . import peer_server, side_by_side
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
# What --peer changes (anything given explicitly, or by --quick, still wins): issue 12's loads.
PEER_DEFAULTS: dict[str, Any] = {
    "modes": side_by_side.MODES,
    "followers": (1, 100, 250, 500),
    "repeat": 1,
}


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
        "--processes",
        type=int,
        help="API processes of the server the benchmark starts (serve --processes; default 1);"
        " its workers are placed as serve places them. Server CPU is all its processes'",
    )
    parser.add_argument(
        "--redis-url",
        help="the Redis the started server uses instead of a private redis-server (any node of a"
        " cluster); each server start gets its own key prefix, left to expire by retention."
        " Redis commands are counted on every master (other clients' too); Redis CPU is unknown",
    )
    parser.add_argument(
        "--redis-cluster",
        action="store_true",
        help="--redis-url is a Redis Cluster (REVIEWSTREAM_REDIS_CLUSTER)",
    )
    parser.add_argument(
        "--queue-shards",
        type=int,
        help="queue shards of the started server (REVIEWSTREAM_QUEUE_SHARDS; default 1;"
        " on a cluster, at least its number of masters, so each holds a shard)",
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
    peer = parser.add_argument_group(
        "side by side with a peer",
        "--peer runs each load on reviewstream and then on the peer, instead of the plan above; "
        f"defaults then: modes {','.join(PEER_DEFAULTS['modes'])}, followers "
        f"{','.join(map(str, PEER_DEFAULTS['followers']))}, 1 run each",
    )
    peer.add_argument(
        "--peer",
        choices=[peer_server.NAME],
        help="the Durable Streams reference server (npm, installed on first use; needs Node.js)",
    )
    peer.add_argument(
        "--peer-dir",
        type=Path,
        help=f"where the peer is installed (default {peer_server.default_peer_dir()})",
    )
    peer.add_argument(
        "--peer-version",
        help=f"the peer package's version (default {peer_server.DEFAULT_VERSION})",
    )


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """Defaults, then ``--peer``'s, then ``--quick``'s, then what was given explicitly."""
    values: dict[str, Any] = {"output": args.output, "url": args.url, "quick": args.quick}
    peer = getattr(args, "peer", None)
    if peer:
        values.update(PEER_DEFAULTS)
        values.update(
            peer=peer,
            peer_dir=args.peer_dir or peer_server.default_peer_dir(),
            peer_version=args.peer_version or peer_server.DEFAULT_VERSION,
        )
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
    if peer:
        other = [m for m in values["modes"] if m not in side_by_side.MODES]
        if other:
            raise SystemExit(
                f"--peer {peer} compares {' and '.join(side_by_side.MODES)} only, not {other[0]}"
            )
        if values["memory"]:
            raise SystemExit("--memory is not part of the side-by-side run (--peer)")
    if args.quick and not peer:
        # The quick plan sweeps nothing: its fan-out rows are the headline's own runs.
        values.setdefault("fanout_rate", values.get("rate", DEFAULTS.rate))
        values.setdefault("fanout_poll_interval", values["poll_intervals"][0])
    options = BenchOptions(**values)
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


def _run_loop(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


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
    if options.peer:
        return run_peer(options)
    for noisy in ("httpx", "httpcore", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    options.output.mkdir(parents=True, exist_ok=True)
    limit = raise_open_files_limit()
    stderr_progress(f"reviewstream bench: output to {options.output}/ (open-files limit {limit})")
    results = _run_loop(run_suite(options))
    command = _command()
    if command:
        results["config"]["command"] = command
    write_json(results, options.output / "results.json")
    chart(results, options.output / CHART_NAME)
    print(table(results), flush=True)
    stderr_progress(f"wrote {options.output / 'results.json'} and {options.output / CHART_NAME}")
    errors = headline_errors(results)
    if errors:
        stderr_progress(f"the headline runs had {errors} errors")
        return 1
    return 0


def _command() -> str | None:
    return " ".join(["reviewstream", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else None


def run_peer(options: BenchOptions) -> int:
    """``--peer``: each load on reviewstream and on the peer; exit 2 when the peer cannot run,
    1 when the 1-follower loads (the smallest) had errors on either side."""
    assert options.peer_dir is not None and options.peer_version is not None
    missing = peer_server.missing_tools(options.peer_dir, options.peer_version)
    if missing:
        print(peer_server.missing_message(missing, options.peer_version), file=sys.stderr)
        return 2
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    options.output.mkdir(parents=True, exist_ok=True)
    limit = raise_open_files_limit()
    stderr_progress(
        f"reviewstream bench --peer {options.peer}: output to {options.output}/ "
        f"(open-files limit {limit})"
    )

    async def main() -> dict[str, Any] | None:
        assert options.peer_dir is not None and options.peer_version is not None
        try:
            install = await peer_server.ensure_installed(
                options.peer_dir, options.peer_version, stderr_progress
            )
        except peer_server.PeerUnavailable as e:
            print(e, file=sys.stderr)
            return None
        return await side_by_side.run_side_by_side(options, install, stderr_progress)

    results = _run_loop(main())
    if results is None:
        return 2
    command = _command()
    if command:
        results["config"]["command"] = command
    text = side_by_side.table(results)
    write_json(results, options.output / side_by_side.RESULTS_NAME)
    (options.output / side_by_side.TABLE_NAME).write_text(text + "\n")
    print(text, flush=True)
    stderr_progress(
        f"wrote {options.output / side_by_side.RESULTS_NAME} and "
        f"{options.output / side_by_side.TABLE_NAME}"
    )
    smallest = min(options.followers)
    errors = sum(
        int(row[side]["errors"] or 0)
        for row in results["loads"]
        if row["followers"] == smallest
        for side in ("reviewstream", "peer")
    )
    if errors:
        stderr_progress(f"the {smallest}-follower loads had {errors} errors")
        return 1
    return 0
