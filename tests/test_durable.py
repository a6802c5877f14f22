"""Durable jobs with real processes, real signals and a real Redis restart: an accepted review is
finished, continued after the stored text, whatever happens to the process writing it.

The API runs in the test's process (a real uvicorn on 127.0.0.1, no worker of its own); the
workers are ``reviewstream worker`` processes. Followers in all four modes stay connected
throughout and must receive the whole text exactly once, proven by the end's ``sha256``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from redis import Redis as SyncRedis

from reviewstream.keys import Keys
from reviewstream.models import JobStatus
from reviewstream.processes.redis_server import redis_server_binary
from reviewstream.settings import Settings
from reviewstream.store import Store
from reviewstream.web import create_app

from tests.support import followers as fl
from tests.support.live import REVIEW, tuned
from tests.support.procs import (
    Process,
    environment,
    exit_seconds,
    start,
    stop_all,
    wait_log,
    wait_ready,
)
from tests.support.servers import free_port, serve

PACE = "40"  # tokens per second: a review of ~100 tokens takes a few seconds


@contextlib.asynccontextmanager
async def api(settings: Settings) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """An API-only server on ``settings`` and a client to it."""
    async with serve(create_app(settings, run_worker=False)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            yield base, c


@contextlib.asynccontextmanager
async def workers(settings: Settings, logs: Path) -> AsyncIterator[Workers]:
    w = Workers(settings, logs)
    try:
        yield w
    finally:
        await stop_all(w.started)


class Workers:
    """``reviewstream worker`` processes on the test's Redis, configured like ``settings``."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.started: list[Process] = []

    async def start(self, *args: str, **changes: str) -> Process:
        s = self.settings
        env = environment(
            str(s.redis_url),
            {
                "sim_tokens_per_second": PACE,
                "lease_seconds": str(s.lease_seconds),
                "reap_interval_seconds": str(s.reap_interval_seconds),
                "claim_idle_seconds": str(s.claim_idle_seconds),
                "worker_heartbeat_timeout_seconds": "15",
                **changes,
            },
        )
        name = f"worker-{len(self.started) + 1}"
        p = await start(name, ["worker", *args], env, self.logs)
        self.started.append(p)
        return p


async def page(c: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    """The job's short-poll answer with all its tokens; retried while Redis is away."""
    while True:
        r = await c.get(f"/jobs/{job_id}", params={"limit": 10000})
        if r.status_code != 503:
            assert r.status_code == 200, r.text
            return dict(r.json())
        await asyncio.sleep(0.1)


async def until(c: httpx.AsyncClient, job_id: str, check: Any, within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        p = await page(c, job_id)
        if check(p):
            return p
        assert time.monotonic() < deadline, f"job {job_id} not there in {within:g} s: {p}"
        await asyncio.sleep(0.02)


async def create(c: httpx.AsyncClient, **overrides: Any) -> str:
    """A job, created once a worker's heartbeat is there (a process takes a second to start)."""
    deadline = time.monotonic() + 30
    while True:
        r = await c.post("/jobs", json={**REVIEW, **overrides})
        if r.status_code == 202:
            return str(r.json()["id"])
        assert r.status_code == 503 and time.monotonic() < deadline, r.text
        await asyncio.sleep(0.1)


async def poller(c: httpx.AsyncClient, job_id: str, path: str) -> fl.Result:
    """A short or long poller that rides out a Redis outage (503s) and keeps its offset."""
    result, offset = fl.Result(), 0
    while True:
        r = await c.get(path.format(job_id), params={"offset": offset, "timeout": 5})
        if r.status_code == 503:
            await asyncio.sleep(0.1)
            continue
        assert r.status_code == 200, r.text
        p = r.json()
        assert p["offset"] == offset
        result.tokens += p["tokens"]
        offset = p["next_offset"]
        if p["done"]:
            result.ends.append(p)
            return result
        if path.endswith("{}"):
            await asyncio.sleep(0.02)


def follow_in_every_mode(
    c: httpx.AsyncClient, base: str, job_id: str
) -> dict[str, asyncio.Task[fl.Result]]:
    return {
        "short_poll": asyncio.create_task(poller(c, job_id, "/jobs/{}")),
        "long_poll": asyncio.create_task(poller(c, job_id, "/jobs/{}/long-poll")),
        "sse": asyncio.create_task(fl.sse(c, job_id)),
        "websocket": asyncio.create_task(fl.websocket(base, job_id)),
    }


async def check_followers(
    followers: dict[str, asyncio.Task[fl.Result]], final: dict[str, Any]
) -> dict[str, fl.Result]:
    """Every follower got the stored text exactly once and one end whose digest proves it."""
    results = dict(zip(followers, await asyncio.gather(*followers.values()), strict=True))
    text = "".join(final["tokens"])
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert final["sha256"] == digest
    for mode, result in results.items():
        assert result.text == text, mode
        assert len(result.ends) == 1, mode
        assert result.ends[0]["sha256"] == digest, mode
        assert result.ends[0]["status"] == "done", mode
    return results


async def uninterrupted_text(c: httpx.AsyncClient) -> str:
    """What the simulated model writes for REVIEW when nothing interrupts it."""
    job_id = await create(c)
    final = await until(c, job_id, lambda p: p["done"], 30)
    assert final["attempts"] == 1
    return "".join(final["tokens"])


async def test_worker_sigkilled_mid_review_is_continued_by_another(
    settings: Settings, tmp_path: Path
) -> None:
    async with api(settings) as (base, c), workers(settings, tmp_path) as w:
        first = await w.start()
        job_id = await create(c)
        followers = follow_in_every_mode(c, base, job_id)
        await until(c, job_id, lambda p: len(p["tokens"]) >= 15, 30)
        await w.start()
        first.proc.send_signal(signal.SIGKILL)
        await first.proc.wait()
        before = "".join((await page(c, job_id))["tokens"])
        final = await until(c, job_id, lambda p: p["done"], 30)
        assert (final["status"], final["attempts"]) == ("done", 2)
        text = "".join(final["tokens"])
        assert text.startswith(before) and len(text) > len(before)
        results = await check_followers(followers, final)
        # Followers that stayed connected were told the job went on, and from where.
        for mode in ("sse", "websocket"):
            attempts = [n["attempt"] for n in results[mode].notices if n["status"] == "running"]
            assert attempts == [2], (mode, results[mode].notices)
        # The simulated model continued the very review it was writing.
        assert text == await uninterrupted_text(c)


async def test_worker_sigkilled_after_claim_before_its_first_token(
    settings: Settings, tmp_path: Path
) -> None:
    async with api(settings) as (base, c), workers(settings, tmp_path) as w:
        first = await w.start(sim_first_token_ms="60000")
        job_id = await create(c)
        followers = follow_in_every_mode(c, base, job_id)
        await until(c, job_id, lambda p: p["status"] == "running", 30)
        first.proc.send_signal(signal.SIGKILL)
        await first.proc.wait()
        await w.start()
        final = await until(c, job_id, lambda p: p["done"], 30)
        assert (final["status"], final["attempts"]) == ("done", 2)
        await check_followers(followers, final)


async def test_followers_hear_of_a_dead_worker_with_only_api_processes_alive(
    settings: Settings, tmp_path: Path
) -> None:
    """No worker left: the API process's own reaper requeues the job and tells the followers."""
    async with api(settings) as (base, c), workers(settings, tmp_path) as w:
        first = await w.start()
        job_id = await create(c)
        sse = asyncio.create_task(fl.sse(c, job_id))
        await until(c, job_id, lambda p: len(p["tokens"]) >= 5, 30)
        first.proc.send_signal(signal.SIGKILL)
        await first.proc.wait()
        killed_at = time.monotonic()
        ws = asyncio.create_task(fl.websocket(base, job_id))
        bound = settings.lease_seconds + 2 * settings.reap_interval_seconds + 1.0
        queued = await until(c, job_id, lambda p: p["status"] == "queued", bound)
        took = time.monotonic() - killed_at
        assert took < bound and queued["attempts"] == 1
        await asyncio.sleep(0.3)  # the notice is on its way to the live followers
        for task in (sse, ws):
            assert not task.done()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Asked again later, a worker continues it.
        await w.start()
        final = await until(c, job_id, lambda p: p["done"], 30)
        assert (final["status"], final["attempts"]) == ("done", 2)


async def test_followers_get_a_status_notice_when_the_job_is_requeued(
    settings: Settings, tmp_path: Path
) -> None:
    async with api(settings) as (base, c), workers(settings, tmp_path) as w:
        first = await w.start()
        job_id = await create(c)
        sse = asyncio.create_task(fl.sse(c, job_id))
        ws = asyncio.create_task(fl.websocket(base, job_id))
        await until(c, job_id, lambda p: len(p["tokens"]) >= 5, 30)
        first.proc.send_signal(signal.SIGKILL)
        await first.proc.wait()
        stored = len((await page(c, job_id))["tokens"])
        await until(c, job_id, lambda p: p["status"] == "queued", 10)
        await w.start()
        await until(c, job_id, lambda p: p["done"], 30)
        for result in await asyncio.gather(sse, ws):
            queued, running = result.notices
            assert queued["status"] == "queued" and queued["attempt"] == 1
            assert queued["offset"] == stored and "lease lapsed" in queued["reason"]
            assert (running["status"], running["attempt"], running["offset"]) == (
                "running",
                2,
                stored,
            )


async def test_sigterm_hands_the_job_over_within_the_graceful_timeout(
    settings: Settings, tmp_path: Path
) -> None:
    grace = 1.0
    async with api(settings) as (base, c), workers(settings, tmp_path) as w:
        first = await w.start("--graceful-timeout", str(grace), sim_tokens_per_second="20")
        job_id = await create(c, length_words=400)  # far longer than the test waits
        followers = follow_in_every_mode(c, base, job_id)
        await until(c, job_id, lambda p: len(p["tokens"]) >= 10, 30)
        # The second worker is up before the signal: its start-up is not the first's exit.
        await wait_log(await w.start(sim_tokens_per_second="400"), "running (concurrency")
        first.proc.send_signal(signal.SIGTERM)
        took = await asyncio.to_thread(exit_seconds, first, time.monotonic())
        assert took <= grace + 1.0, f"exited {took:.2f} s after SIGTERM"
        await first.proc.wait()
        assert first.proc.returncode == 0
        final = await until(c, job_id, lambda p: p["done"], 30)
        assert (final["status"], final["attempts"]) == ("done", 2)
        await check_followers(followers, final)
    assert "handed over" in first.log.read_text()


@contextlib.contextmanager
def redis_with_aof(port: int, workdir: str) -> Any:
    """A redis-server with an append-only file, so a restart keeps every job."""
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "yes", "--appendfsync", "always", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = SyncRedis(port=port)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(Exception):
                if client.ping():
                    break
            assert time.monotonic() < deadline and proc.poll() is None, "redis did not start"
            time.sleep(0.02)
        client.close()
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


async def test_a_redis_restart_mid_review_is_weather(settings: Settings, tmp_path: Path) -> None:
    """Redis stops for 5 s and comes back on the same port: the job ends done, no follower loses
    or repeats a token, and a job created right after the restart succeeds."""
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="rs-aof-", dir=tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    local = tuned(settings, redis_url=url)
    with redis_with_aof(port, workdir) as first_redis:
        async with api(local) as (base, c), workers(local, tmp_path) as w:
            await w.start(sim_tokens_per_second="20")
            job_id = await create(c)
            followers = follow_in_every_mode(c, base, job_id)
            await until(c, job_id, lambda p: len(p["tokens"]) >= 10, 30)
            first_redis.terminate()
            await asyncio.to_thread(first_redis.wait, 10)
            await asyncio.sleep(5)
            with redis_with_aof(port, workdir):
                after = await create(c)
                final = await until(c, job_id, lambda p: p["done"], 60)
                assert final["status"] == "done", final
                await check_followers(followers, final)
                later = await until(c, after, lambda p: p["done"], 30)
                assert later["status"] == "done", later


async def test_a_job_nobody_follows_is_cancelled_and_a_followed_one_is_not(
    settings: Settings, redis: aioredis.Redis
) -> None:
    abandon = 1.0
    local = tuned(settings, abandon_seconds=abandon, sim_tokens_per_second=25, lease_seconds=0.6)
    store = Store(redis, Keys(local.key_prefix), retention_seconds=60)
    async with serve(create_app(local)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            lonely = await create(c)
            followed = await create(c)
            sse = asyncio.create_task(fl.sse(c, followed))
            # Read once, then never again (watched from Redis, behind the API's back).
            r = await c.get(f"/jobs/{lonely}/long-poll", params={"timeout": 0.1})
            assert r.status_code == 200
            read_at = time.monotonic()
            while not (snap := await store.jobs.read(lonely, 0, 0)).status.terminal:
                assert time.monotonic() - read_at < 10, snap
                await asyncio.sleep(0.02)
            took = time.monotonic() - read_at
            assert snap.status is JobStatus.CANCELLED and "abandoned" in (snap.error or "")
            assert abandon <= took <= abandon + local.lease_seconds + 1.0
            result = await sse
            assert result.ends[0]["status"] == "done"


@pytest.mark.parametrize("workers_in", ["process", "thread", "inline"])
async def test_serve_sigterm_hands_its_jobs_over_and_exits_within_the_graceful_timeout(
    settings: Settings, tmp_path: Path, workers_in: str
) -> None:
    """``serve`` with its workers (wherever it runs them): drained streams, the job handed over,
    a prompt exit."""
    grace = 1.0
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with workers(settings, tmp_path) as w:
        env = environment(
            str(settings.redis_url), {"sim_tokens_per_second": "20", "serve_workers": workers_in}
        )
        args = ["serve", "--port", str(port), "--graceful-timeout", str(grace)]
        server = await start("serve", args, env, tmp_path)
        w.started.append(server)  # stopped and its log shown with the workers
        await wait_ready(base, server)
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            job_id = await create(c)
            sse = asyncio.create_task(fl.sse(c, job_id))
            await until(c, job_id, lambda p: len(p["tokens"]) >= 5, 30)
            server.proc.send_signal(signal.SIGTERM)
            took = await asyncio.to_thread(exit_seconds, server, time.monotonic())
            await server.proc.wait()
            # Its SSE stream ended at once, without an end (EventSource resumes elsewhere).
            assert (await asyncio.wait_for(sse, 1)).ends == []
        assert took <= grace + 1.0, f"exited {took:.2f} s after SIGTERM"
        async with api(settings) as (_, c):
            handed = await page(c, job_id)
            assert (handed["status"], handed["attempts"]) == ("queued", 1)
            await w.start()
            final = await until(c, job_id, lambda p: p["done"], 30)
            assert (final["status"], final["attempts"]) == ("done", 2)
