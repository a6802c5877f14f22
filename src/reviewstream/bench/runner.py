"""One run of one scenario: create its jobs, follow them, check every follower's tokens.

Each job's followers start as soon as its ``POST /jobs`` returns. The system's counters (server
and Redis CPU, Redis command counts, the benchmark's own CPU) are read just before the first
``POST`` and just after the last follower finished, so a run's costs cover exactly its jobs.
Afterwards each job's stored tokens are read once (outside the measured window) and every
follower's tokens are compared with them: lost, duplicated and wrong tokens are errors.

A baseline run creates the same jobs with nobody following and waits for their end on a Redis
pattern subscription (free for the server: its publishes happen anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..keys import Keys
from ..models import JobStatus
from .conn import Endpoint
from .followers import FollowOptions, JobHandle, Trace, follow
from .plan import Scenario
from .server import Sample, System, sample

REVIEW_POINTS = (
    "Led the payments migration; mentors two juniors; needs to delegate more; "
    "excellent incident handling."
)
# A rough count of the simulated model's tokens per requested word, for run deadlines only.
TOKENS_PER_WORD = 1.4

Progress = Callable[[str], None]


@dataclass
class RunResult:
    """Everything one run measured, before any summarising."""

    scenario: Scenario
    traces: list[Trace]
    duration_s: float
    appended_tokens: int
    before: Sample
    after: Sample
    errors: list[str] = field(default_factory=list)

    @property
    def delivered_tokens(self) -> int:
        return sum(len(t.latencies_ms) + t.missing_ts for t in self.traces)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection in the benchmark's process while a load is measured.

    A full collection stops every follower at once (a run keeps every token and its arrival
    time), and tokens that reach the server meanwhile are read late. A producer in this process
    (a peer's, in ``benchmarks/side_by_side.py``) stops too, so the pause would inflate one
    side's latencies only. Garbage with cycles waits until the run ends.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def job_body(length_words: int) -> dict[str, Any]:
    """The ``POST /jobs`` body of every benchmark job (the same text each time)."""
    return {
        "employee_name": "Ada Lovelace",
        "employee_review_points": REVIEW_POINTS,
        "length_words": length_words,
        "model": "sim-default",
    }


def expected_seconds(scenario: Scenario) -> float:
    """How long one job takes to produce, by the simulated model's settings."""
    tokens = scenario.length_words * TOKENS_PER_WORD
    return scenario.server.first_token_ms / 1000 + tokens / scenario.server.rate


def deadline_seconds(scenario: Scenario) -> float:
    """How long a run may take before its unfinished followers count as errors."""
    expected = expected_seconds(scenario)
    return 2 * expected + 15 + scenario.jobs * scenario.per_job * len(scenario.modes) / 200


class EndWatcher:
    """Hears every job's end on a pattern subscription (baseline runs, producer pace)."""

    def __init__(self, system: System) -> None:
        assert system.redis is not None and system.redis.client is not None
        self._pubsub: Any = system.redis.client.pubsub()
        self._keys = Keys()
        self.ended: set[str] = set()

    async def __aenter__(self) -> EndWatcher:
        await self._pubsub.psubscribe(self._keys.channel("*"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._pubsub.aclose()

    async def wait_for(self, job_ids: set[str], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not job_ids <= self.ended:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            if message is None or message.get("type") != "pmessage":
                continue
            if parse_end(str(message["data"])):
                self.ended.add(self._keys.job_id_of_channel(str(message["channel"])))
        return True


async def _create_job(client: httpx.AsyncClient, body: dict[str, Any]) -> JobHandle:
    posted_at = time.time()
    response = await client.post("/jobs", json=body)
    if response.status_code != 202:
        raise RuntimeError(f"POST /jobs answered {response.status_code}: {response.text[:200]}")
    return JobHandle(str(response.json()["id"]), posted_at)


async def stored_tokens(client: httpx.AsyncClient, job_id: str) -> tuple[list[str], bool]:
    """A job's stored tokens, and whether it ended well."""
    response = await client.get(f"/jobs/{job_id}", params={"offset": 0, "limit": 10000})
    response.raise_for_status()
    page = response.json()
    return list(page["tokens"]), bool(page["done"] and page["status"] == "done")


async def run_scenario(
    scenario: Scenario, system: System, *, seed: int = 0, progress: Progress | None = None
) -> RunResult:
    """Run ``scenario`` once against ``system``."""
    endpoint = Endpoint.from_url(system.base_url)
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    body = job_body(scenario.length_words)
    traces: list[Trace] = []
    tasks: list[asyncio.Task[None]] = []
    errors: list[str] = []
    deadline = deadline_seconds(scenario)
    options = FollowOptions(poll_interval=scenario.poll_interval, seed=seed)
    async with (
        httpx.AsyncClient(base_url=system.base_url, limits=limits, timeout=30) as client,
        contextlib.AsyncExitStack() as stack,
    ):
        watcher = None
        if scenario.kind == "baseline" and system.redis is not None and system.redis.client:
            watcher = await stack.enter_async_context(EndWatcher(system))
        semaphore = asyncio.Semaphore(16)

        async def start(index: int) -> JobHandle | None:
            try:
                async with semaphore:
                    job = await _create_job(client, body)
            except (httpx.HTTPError, RuntimeError, ValueError, KeyError) as e:
                errors.append(f"creating a job failed: {e}")
                return None
            for mode in scenario.modes:
                for k in range(scenario.per_job):
                    trace = Trace(mode, job)
                    traces.append(trace)
                    opts = FollowOptions(
                        poll_interval=options.poll_interval,
                        long_poll_hold=options.long_poll_hold,
                        seed=seed * 1_000_003 + index * 101 + k,
                    )
                    tasks.append(asyncio.create_task(follow(mode, endpoint, trace, opts)))
            return job

        stack.enter_context(collector_paused())
        before = await sample(system)
        started = time.monotonic()
        try:
            created = await asyncio.gather(*(start(i) for i in range(scenario.jobs)))
            jobs = [job for job in created if job is not None]
            if watcher is not None:
                if not await watcher.wait_for({j.id for j in jobs}, deadline):
                    errors.append("jobs did not end before the deadline")
            elif scenario.kind == "baseline":
                polled = _poll_until_done(client, jobs, deadline, expected_seconds(scenario))
                if not await polled:
                    errors.append("jobs did not end before the deadline")
            else:
                await wait_followers(tasks, traces, deadline, started, progress)
            after = await sample(system)
            duration = time.monotonic() - started
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        appended = 0
        by_job: dict[str, list[Trace]] = {}
        for trace in traces:
            by_job.setdefault(trace.job.id, []).append(trace)
        for job in jobs:
            try:
                tokens, done = await stored_tokens(client, job.id)
            except (httpx.HTTPError, ValueError, KeyError) as e:
                errors.append(f"reading job {job.id} back failed: {e}")
                for trace in by_job.get(job.id, []):
                    trace.fail("its job could not be read back")
                continue
            appended += len(tokens)
            if not done:
                errors.append(f"job {job.id} had not ended well when read back")
            for trace in by_job.get(job.id, []):
                trace.verify(tokens)
    return RunResult(scenario, traces, duration, appended, before, after, errors)


async def wait_followers(
    tasks: list[asyncio.Task[None]],
    traces: list[Trace],
    deadline: float,
    started: float,
    progress: Progress | None,
) -> None:
    """Wait for the followers until ``deadline`` seconds after ``started``, reporting progress."""
    pending = set(tasks)
    tick = 5.0
    while pending:
        left = started + deadline - time.monotonic()
        if left <= 0:
            return
        _, pending = await asyncio.wait(pending, timeout=min(tick, left))
        if pending and progress is not None:
            done = sum(1 for t in traces if t.finished)
            tokens = sum(len(t.latencies_ms) for t in traces)
            progress(
                f"{time.monotonic() - started:5.1f} s: {done}/{len(traces)} followers done, "
                f"{tokens:,} tokens delivered"
            )


async def _poll_until_done(
    client: httpx.AsyncClient, jobs: list[JobHandle], seconds: float, first_after: float
) -> bool:
    """Wait for the jobs to end, reading their status (no end watcher: ``--url``, or a Redis
    the benchmark did not start); False when one had not ended by the deadline. The first read
    waits ``first_after`` seconds (the jobs' expected time), so that a baseline's reads add
    little to its costs. A page's ``done`` says that page reached the end: the status tells."""
    deadline = time.monotonic() + seconds
    waiting = {j.id for j in jobs}
    await asyncio.sleep(first_after)
    while waiting and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        for job_id in list(waiting):
            response = await client.get(f"/jobs/{job_id}", params={"offset": 0, "limit": 1})
            if response.status_code == 200 and JobStatus(response.json()["status"]).terminal:
                waiting.discard(job_id)
    return not waiting


def parse_end(data: str) -> bool:
    """True when a channel message announces a job's end."""
    with contextlib.suppress(ValueError):
        return "end" in json.loads(data)
    return False
