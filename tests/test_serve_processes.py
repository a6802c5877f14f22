"""``reviewstream serve --processes N``: real API processes on one port under uvicorn's
supervisor. Two distinct processes serve; followers in every mode that reconnect mid-stream, each
time on the other process, get the job's text exactly once; the embedded Redis is started once;
SIGTERM drains everything within the grace, and a SIGKILLed parent leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil

from reviewstream.wire import MODES

from tests.support import followers as fl
from tests.support.procs import Process, environment, exit_seconds, start, stop_all, wait_ready
from tests.support.servers import free_port

REVIEW = {"employee_name": "Barbara Liskov", "employee_review_points": "Substitution"}
# prometheus_client writes values as floats ("1.0").
PID = re.compile(r'^reviewstream_process_info\{pid="(\d+)"\} 1(?:\.0)?$', re.MULTILINE)
STEPS = (1, 10)  # tokens per connection, at random: a follower reconnects that often


@contextlib.asynccontextmanager
async def served(
    logs: Path, env: dict[str, str], *args: str, workers: int = 0
) -> AsyncIterator[tuple[str, Process]]:
    """``serve --processes 2 ARGS`` (and ``workers`` standalone ``reviewstream worker``), ready."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = ["serve", "--processes", "2", "--port", str(port), "--log-level", "warning", *args]
    processes = [await start("serve", serve, env, logs)]
    try:
        for n in range(workers):
            processes.append(await start(f"worker-{n}", ["worker"], env, logs))
        await wait_ready(base, processes[0])
        yield base, processes[0]
    finally:
        await stop_all(processes)


async def answering_pid(c: httpx.AsyncClient) -> int:
    """The pid of the API process on ``c``'s connection (from ``/metrics``)."""
    match = PID.search((await c.get("/metrics")).text)
    assert match is not None
    return int(match.group(1))


@contextlib.asynccontextmanager
async def client_on_another_process(
    base: str, avoid: int | None
) -> AsyncIterator[tuple[httpx.AsyncClient, int]]:
    """A client whose one connection is served by an API process other than ``avoid``."""
    for _ in range(200):
        c = httpx.AsyncClient(base_url=base, timeout=20, limits=httpx.Limits(max_connections=1))
        pid = await answering_pid(c)
        if pid != avoid:
            try:
                yield c, pid
            finally:
                await c.aclose()
            return
        await c.aclose()
    raise AssertionError(f"no connection reached a process other than {avoid}")


async def follow_switching(
    mode: str, base: str, job_id: str, pids: list[int], rng: random.Random
) -> fl.Result:
    """Follow the job a few tokens per fresh connection; the HTTP modes switch process on every
    reconnection (each serving pid goes to ``pids``), SSE resumes by Last-Event-ID."""
    result, pid = fl.Result(), None
    while not result.ends:
        stop = result.offset + rng.randint(*STEPS)
        if mode == "websocket":  # a fresh connection each time: the kernel picks the process
            await fl.websocket(base, job_id, result.offset, stop_after=stop, result=result)
            continue
        async with client_on_another_process(base, pid) as (c, pid):
            pids.append(pid)
            if mode == "sse":
                await fl.sse(
                    c, job_id, last_event_id=result.last_id, stop_after=stop, result=result
                )
            else:
                await fl.follow(mode, c, base, job_id, result.offset, stop, result)
    return result


def api_processes(serve: Process) -> set[int]:
    """The API processes the supervisor spawned (multiprocessing's spawn children)."""
    spawned = set()
    for child in psutil.Process(serve.proc.pid).children():
        with contextlib.suppress(psutil.NoSuchProcess):  # a zombie included: it has exited
            if "spawn_main" in " ".join(child.cmdline()):
                spawned.add(child.pid)
    return spawned


def descendants(serve: Process) -> list[psutil.Process]:
    children: list[psutil.Process] = psutil.Process(serve.proc.pid).children(recursive=True)
    return children


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (a zombie has exited; only its parent has not reaped it)."""
    left = []
    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
    return left


async def gone(processes: list[psutil.Process], deadline: float) -> list[psutil.Process]:
    """Wait until none of ``processes`` runs or ``deadline`` (monotonic); those still running."""
    while alive(processes) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return alive(processes)


async def test_two_api_processes_serve_every_mode_to_followers_switching_process(
    redis_url: str, tmp_path: Path
) -> None:
    """``--api-only --processes 2`` and two standalone workers on one Redis: random
    disconnects and resumes, each on the other API process, lose and duplicate nothing."""
    rng = random.Random(20261202)
    env = environment(redis_url, {"sim_tokens_per_second": "60"})
    async with served(tmp_path, env, "--api-only", workers=2) as (base, serve):
        spawned = api_processes(serve)
        assert len(spawned) == 2
        async with httpx.AsyncClient(base_url=base, timeout=20) as c:
            seen = set()
            for _ in range(200):  # fresh connections: the kernel spreads them
                async with httpx.AsyncClient(base_url=base, timeout=20) as fresh:
                    seen.add(await answering_pid(fresh))
                if len(seen) == 2:
                    break
            assert seen == spawned  # two distinct API processes really answer
            body = {**REVIEW, "length_words": 80}
            jobs = [(await c.post("/jobs", json=body)).json()["id"] for _ in range(2)]
            runs = [(mode, job) for job in jobs for mode in MODES for _ in range(2)]
            pids: list[list[int]] = [[] for _ in runs]  # each follower's serving processes
            results = await asyncio.gather(
                *(
                    follow_switching(mode, base, job, served_by, rng)
                    for (mode, job), served_by in zip(runs, pids, strict=True)
                )
            )
            pages = {j: (await c.get(f"/jobs/{j}", params={"offset": 0})).json() for j in jobs}
        for page in pages.values():
            assert page["status"] == "done"
            assert len(page["tokens"]) > 8 * STEPS[1]  # every follower reconnected many times
        for (mode, job), result, served_by in zip(runs, results, pids, strict=True):
            text = "".join(pages[job]["tokens"])
            sha = hashlib.sha256(text.encode()).hexdigest()
            assert result.text == text, mode  # every token, once, in order
            assert len(result.ends) == 1 and result.ends[0]["sha256"] == sha, mode
            if mode != "websocket":  # it switched process on every reconnection
                assert set(served_by) == spawned, mode
                assert all(a != b for a, b in zip(served_by, served_by[1:], strict=False)), mode


async def test_embedded_redis_is_started_once_and_sigterm_drains_all_within_the_grace(
    redis_url: str, tmp_path: Path
) -> None:
    env = environment(redis_url, {"sim_tokens_per_second": "400", "worker_grace_seconds": "2"})
    del env["REVIEWSTREAM_REDIS_URL"]  # the zero-config default: serve embeds a redis-server
    grace = 2.0
    async with served(tmp_path, env) as (base, serve):
        children = descendants(serve)
        names = [" ".join(p.cmdline()) for p in children]
        assert sum("redis-server" in n for n in names) == 1, names
        assert sum(n.endswith("reviewstream worker") for n in names) == 1, names
        assert len(api_processes(serve)) == 2
        async with httpx.AsyncClient(base_url=base, timeout=20) as c:
            job = (await c.post("/jobs", json=REVIEW)).json()
            done = await fl.short_poll(c, job["id"])
            assert done.ends[0]["status"] == "done" and "Barbara" in done.text
            # A long job, running when the signal comes, and followers on both processes.
            slow = {**REVIEW, "length_words": 1500}
            long_job = (await c.post("/jobs", json=slow)).json()

            async def stream(pid: int | None) -> float:
                """Follow on a process other than ``pid``; when the stream ended (monotonic)."""
                async with client_on_another_process(base, pid) as (fresh, _):
                    with contextlib.suppress(httpx.HTTPError):
                        await fl.sse(fresh, long_job["id"])
                return time.monotonic()

            async with httpx.AsyncClient(base_url=base) as probe:
                first = await answering_pid(probe)
            streams = [asyncio.create_task(stream(avoid)) for avoid in (first, None, None)]
            await asyncio.sleep(1.0)
            assert not any(s.done() for s in streams)
            signalled = time.monotonic()
            serve.proc.send_signal(signal.SIGTERM)
            ended = await asyncio.gather(*streams)
        # Streams end at once (drained), not after the grace.
        assert max(ended) - signalled < 1.0, [e - signalled for e in ended]
        seconds = await asyncio.to_thread(exit_seconds, serve, signalled)
        assert seconds < grace + 1.0
        left = await gone(children, signalled + grace + 1.0)
        assert not left, [p.cmdline() for p in left]
        print(f"serve --processes 2 exited {seconds:.2f} s after SIGTERM (grace {grace:g} s)")


async def test_a_sigkilled_parent_leaves_no_process_behind(tmp_path: Path) -> None:
    env = environment("unused", {})
    del env["REVIEWSTREAM_REDIS_URL"]
    async with served(tmp_path, env) as (_, serve):
        children = descendants(serve)
        assert len(children) >= 4  # redis-server, the worker, two API processes
        serve.proc.kill()
        left = await gone(children, time.monotonic() + 10)
        assert not left, [p.cmdline() for p in left]


async def running_per_process(base: str, pids: set[int]) -> dict[int, int]:
    """Jobs each of the API processes ``pids`` runs (its ``/metrics``, over fresh connections)."""
    running: dict[int, int] = {}
    for _ in range(200):
        async with httpx.AsyncClient(base_url=base, timeout=20) as fresh:
            text = (await fresh.get("/metrics")).text
        match = PID.search(text)
        gauge = re.search(r"^reviewstream_worker_running_jobs (\d+)(?:\.0)?$", text, re.MULTILINE)
        assert match is not None and gauge is not None
        running[int(match.group(1))] = int(gauge.group(1))
        if set(running) >= pids:
            return {pid: running[pid] for pid in pids}
    raise AssertionError(f"not every process answered: {running}")


async def test_thread_workers_split_the_concurrency_over_the_processes(
    redis_url: str, tmp_path: Path
) -> None:
    """3 jobs at once over 2 processes (2 + 1), and still so once a killed one is replaced."""
    settings = {"serve_workers": "thread", "worker_concurrency": "3", "lease_seconds": "1"}
    env = environment(redis_url, {**settings, "sim_tokens_per_second": "5"})
    async with (
        served(tmp_path, env) as (base, serve),
        httpx.AsyncClient(base_url=base, timeout=20) as c,
    ):
        slow = {**REVIEW, "length_words": 1500}
        for _ in range(6):
            assert (await c.post("/jobs", json=slow)).status_code == 202

        async def shares() -> list[int]:
            """Each process's running jobs, once they add up to 3 (and a second later)."""
            pids = api_processes(serve)
            deadline = time.monotonic() + 15
            while sum((await running_per_process(base, pids)).values()) < 3:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # a fourth would have started by now, were there room
            return sorted((await running_per_process(base, pids)).values())

        assert await shares() == [1, 2]
        # uvicorn's supervisor replaces a dead API process; the new one takes the dead one's
        # share (its slot), and the dead one's jobs are requeued once their leases lapse.
        before = api_processes(serve)
        psutil.Process(min(before)).kill()
        deadline = time.monotonic() + 20
        while len(api_processes(serve) - before) < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(api_processes(serve) - before) == 1
        assert await shares() == [1, 2]
