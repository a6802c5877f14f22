"""One run of one load against the Durable Streams peer: what ``runner.run_scenario`` does for
reviewstream, with the same jobs, pace, followers and checks.

A job is a stream ``/bench/<tag>-<i>`` created with ``PUT`` (``application/json``); its
followers start as soon as the ``PUT`` returns, as reviewstream's start when ``POST /jobs``
returns. A producer in the benchmark plays the simulated model: it waits the model's time to
first token from the ``PUT``, then appends the job's tokens — the very tokens reviewstream's
simulated model writes for the benchmark's request — at the same rate, each due at a fixed time
from the start, one ``POST`` per token carrying ``{"offset": i, "tokens": [token], "ts":
[send time]}``; the last ``POST`` carries the end message with ``Stream-Closed: true``.

The latency clock is not reviewstream's, and the difference is not in the peer's favour:
reviewstream's ``ts`` is Redis' ``TIME`` inside the append script, once the token reached the
server; the peer has no append time of its own, so its ``ts`` is the benchmark's ``time.time()``
just before the append request is written, and its latency includes the append's trip into the
server. That trip's round trip is reported (``append_ms``) so the difference can be judged.

After the run, each stream is read back once (a catch-up read from ``-1``, outside the measured
window) and every follower's tokens are compared with what the server stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field

import httpx

from .conn import Endpoint, HttpConnection
from .followers import FollowOptions, JobHandle, Trace, follow
from .peer_followers import FOLLOWERS, STREAM_START, on_message
from .plan import Scenario
from .runner import Progress, RunResult, collector_paused, deadline_seconds, wait_followers
from .server import System, sample

CONTENT_TYPE = "application/json"


@dataclass
class PeerRun(RunResult):
    """A run against the peer; ``append_ms``: each append's round trip, as the producer saw it."""

    append_ms: list[float] = field(default_factory=list)


def token_message(offset: int, token: str, sent: float) -> bytes:
    """The body that appends token ``offset`` (the shape of reviewstream's token message)."""
    return json.dumps({"offset": offset, "tokens": [token], "ts": [sent]}).encode()


def end_message(next_offset: int) -> bytes:
    """The body that ends the job, appended together with the stream's closure."""
    return json.dumps({"end": {"status": "done", "next_offset": next_offset}}).encode()


async def produce(
    endpoint: Endpoint,
    path: str,
    tokens: list[str],
    *,
    start_at: float,
    rate: float,
    append_ms: list[float],
    errors: list[str],
) -> int:
    """Append ``tokens`` to the stream at ``path``, token ``i`` due at ``start_at + i / rate``
    (event-loop time), then the end with ``Stream-Closed: true``. Returns the tokens appended.

    A request is never sent twice: an append is not idempotent without the protocol's producer
    headers, and a repeated token would show up as a duplicate at every follower.
    """
    loop = asyncio.get_running_loop()
    conn: HttpConnection | None = None
    appended = 0
    try:
        for i, token in enumerate([*tokens, None]):
            await asyncio.sleep(max(0.0, start_at + i / rate - loop.time()))
            if conn is None or not conn.is_open:  # the server may close an idle keep-alive
                if conn is not None:
                    conn.close()
                conn = await HttpConnection.open(endpoint)
            headers = {"Content-Type": CONTENT_TYPE}
            sent = time.time()
            if token is None:
                body = end_message(appended)
                headers["Stream-Closed"] = "true"
            else:
                body = token_message(i, token, sent)
            response = conn.request("POST", path, headers=headers, body=body)
            await response.done
            if response.status != 204:
                answer = bytes(response.body[:200])
                errors.append(f"append to {path} answered {response.status}: {answer!r}")
                return appended
            append_ms.append((response.complete_time - sent) * 1000)
            appended += token is not None
    except OSError as e:
        errors.append(f"appending to {path} failed: {e}")
    finally:
        if conn is not None:
            conn.close()
    return appended


async def _stored(client: httpx.AsyncClient, path: str) -> tuple[list[str], bool]:
    """The stream's tokens as stored, and whether it holds the end and is closed."""
    response = await client.get(path, params={"offset": STREAM_START})
    response.raise_for_status()
    trace = Trace("read-back", JobHandle(path, 0.0))
    for message in response.json():
        on_message(trace, message, 0.0)
    closed = response.headers.get("stream-closed", "").lower() == "true"
    tokens = [t for t in trace.tokens if t is not None]
    return tokens, closed and trace.finished and trace.error_count == 0


async def run_peer_scenario(
    scenario: Scenario,
    system: System,
    tokens: list[str],
    *,
    tag: str,
    seed: int = 0,
    progress: Progress | None = None,
) -> PeerRun:
    """Run ``scenario``'s load once against the peer at ``system``; ``tokens`` are each job's."""
    endpoint = Endpoint.from_url(system.base_url)
    loop = asyncio.get_running_loop()
    traces: list[Trace] = []
    tasks: list[asyncio.Task[None]] = []
    producers: list[asyncio.Task[int]] = []
    errors: list[str] = []
    append_ms: list[float] = []
    deadline = deadline_seconds(scenario)
    first_token = scenario.server.first_token_ms / 1000
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    jobs: list[JobHandle] = []
    async with (
        httpx.AsyncClient(base_url=system.base_url, limits=limits, timeout=30) as client,
        contextlib.AsyncExitStack() as stack,
    ):
        semaphore = asyncio.Semaphore(16)

        async def start(index: int) -> None:
            path = f"/bench/{tag}-{index}"
            try:
                async with semaphore:
                    posted_at, due = time.time(), loop.time() + first_token
                    response = await client.put(path, headers={"Content-Type": CONTENT_TYPE})
                if response.status_code != 201:
                    raise RuntimeError(f"PUT {path} answered {response.status_code}")
            except (httpx.HTTPError, RuntimeError) as e:
                errors.append(f"creating a stream failed: {e}")
                return
            job = JobHandle(path, posted_at)
            jobs.append(job)
            for mode in scenario.modes:
                for k in range(scenario.per_job):
                    trace = Trace(mode, job)
                    traces.append(trace)
                    options = FollowOptions(seed=seed * 1_000_003 + index * 101 + k)
                    tasks.append(
                        asyncio.create_task(follow(mode, endpoint, trace, options, FOLLOWERS))
                    )
            producer = produce(
                endpoint, path, tokens, start_at=due, rate=scenario.server.rate,
                append_ms=append_ms, errors=errors,
            )  # fmt: skip
            producers.append(asyncio.create_task(producer))

        stack.enter_context(collector_paused())
        before = await sample(system)
        started = time.monotonic()
        try:
            await asyncio.gather(*(start(i) for i in range(scenario.jobs)))
            await wait_followers(tasks, traces, deadline, started, progress)
            left = started + deadline - time.monotonic()
            if producers and left > 0:
                await asyncio.wait(producers, timeout=left)
            after = await sample(system)
            duration = time.monotonic() - started
        finally:
            for task in [*tasks, *producers]:
                task.cancel()
            results = await asyncio.gather(*tasks, *producers, return_exceptions=True)
        appended = sum(r for r in results[len(tasks) :] if isinstance(r, int))
        by_job: dict[str, list[Trace]] = {}
        for trace in traces:
            by_job.setdefault(trace.job.id, []).append(trace)
        for job in jobs:
            try:
                stored, ended = await _stored(client, job.id)
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
                errors.append(f"reading stream {job.id} back failed: {e}")
                for trace in by_job.get(job.id, []):
                    trace.fail("its stream could not be read back")
                continue
            if stored != tokens or not ended:
                errors.append(f"stream {job.id} did not store the job's tokens and its end")
            for trace in by_job.get(job.id, []):
                trace.verify(stored)
    return PeerRun(scenario, traces, duration, appended, before, after, errors, append_ms)
