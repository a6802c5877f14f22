"""``reviewstream review``: write a review on a running server and print it as it arrives.

The review goes to stdout, flushed per batch, so it can be piped; a one-line summary (status,
tokens, time to first token, elapsed) goes to stderr. Exit codes: 0 done, 1 the job failed or
was cancelled, 2 the API refused the request or could not be reached, 130 interrupted (the job
is cancelled on the way out).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from typing import TextIO

import httpx

from ..wire import MODES
from ._client import ReviewstreamClient
from ._errors import ClientError
from ._models import End, TokenBatch

EXIT_DONE = 0
EXIT_JOB_FAILED = 1
EXIT_REFUSED = 2
EXIT_INTERRUPTED = 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``review`` subcommand's options to ``parser``."""
    parser.add_argument(
        "--url",
        default=os.environ.get("REVIEWSTREAM_URL", "http://127.0.0.1:8000"),
        help="the server's base URL (default: $REVIEWSTREAM_URL or http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("REVIEWSTREAM_API_KEY"),
        help="the API key of a server with REVIEWSTREAM_API_KEYS (default: $REVIEWSTREAM_API_KEY)",
    )
    parser.add_argument("--name", required=True, help="the employee's name")
    parser.add_argument(
        "--points", required=True, help="the review points; '-' reads them from stdin"
    )
    parser.add_argument("--mode", choices=MODES, default="sse", help="delivery mode (default: sse)")
    parser.add_argument(
        "--tone", choices=("balanced", "encouraging", "direct", "formal"), default=None
    )
    parser.add_argument("--length", type=int, default=None, help="about this many words")
    parser.add_argument("--provider", default=None, help="override the server's provider")
    parser.add_argument("--model", default=None, help="model name (or simulated pace preset)")
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=0.5,
        help="seconds between short polls (default: 0.5)",
    )


async def review(
    args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Create the job, follow it in ``args.mode``, print it; returns the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    points = sys.stdin.read() if args.points == "-" else args.points
    started = time.monotonic()
    first: float | None = None
    count = 0
    end: End | None = None
    async with ReviewstreamClient(args.url, api_key=args.api_key) as client:
        try:
            job = await client.create(
                args.name,
                points,
                tone=args.tone,
                length_words=args.length,
                provider=args.provider,
                model=args.model,
            )
            try:
                async with contextlib.aclosing(
                    client.follow(job.id, mode=args.mode, poll_interval=args.poll_interval)
                ) as items:
                    async for item in items:
                        if isinstance(item, TokenBatch):
                            if first is None:
                                first = time.monotonic() - started
                            count += len(item.tokens)
                            out.write(item.text)
                            out.flush()
                        else:
                            end = item
            except asyncio.CancelledError:
                with contextlib.suppress(ClientError, httpx.HTTPError):
                    await client.cancel(job.id)
                raise
        except ClientError as e:
            err.write(f"\nreviewstream: error: {e.message}\n")
            return EXIT_REFUSED
        except httpx.HTTPError as e:
            err.write(f"\nreviewstream: error: cannot reach {args.url}: {e}\n")
            return EXIT_REFUSED
    if end is None:  # follow() ends with an End or raises; this is a server bug
        err.write(f"\nreviewstream: error: the stream of job {job.id} ended without its end\n")
        return EXIT_REFUSED
    out.write("\n")
    out.flush()
    ttft = f"{first:.2f} s" if first is not None else "-"
    summary = (
        f"{end.status}: {count} tokens, ttft {ttft}, elapsed {time.monotonic() - started:.2f} s"
        f" ({args.mode}, job {job.id})"
    )
    if end.error:
        summary += f": {end.error}"
    err.write(summary + "\n")
    err.flush()
    return EXIT_DONE if end.status == "done" else EXIT_JOB_FAILED


def run(args: argparse.Namespace) -> int:
    """Entry point of ``reviewstream review``; Ctrl-C cancels the job and exits 130."""
    try:
        return asyncio.run(review(args))
    except KeyboardInterrupt:
        sys.stderr.write("\nreviewstream: interrupted; the job was cancelled\n")
        return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    """Run ``review`` as a standalone command (``python -m reviewstream.client.cli``)."""
    parser = argparse.ArgumentParser(prog="reviewstream review", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
