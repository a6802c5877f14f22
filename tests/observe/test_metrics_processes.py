"""``/metrics`` under ``serve --processes 2`` with its worker process: any API process answers
for all of them (one multiprocess directory per run): tokens delivered by both API processes,
and jobs ended, attempts and first tokens recorded by the worker process, which has no port."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx

from reviewstream.settings import Settings
from reviewstream.web import create_app
from reviewstream.wire import MODES

from tests.support import followers as fl
from tests.support import live
from tests.support.procs import environment, start, stop_all, wait_log, wait_ready
from tests.support.scrape import Samples, until, value
from tests.support.servers import free_port, serve

REVIEW = {"employee_name": "Frances Allen", "employee_review_points": "Compilers"}
PID = re.compile(r'^reviewstream_process_info\{pid="(\d+)"\} 1', re.MULTILINE)
JOBS_PER_MODE = 3


async def test_any_process_answers_for_every_process(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = environment(redis_url, {"sim_tokens_per_second": "300"})
    args = ["serve", "--processes", "2", "--port", str(port), "--log-level", "warning"]
    serve = await start("serve", args, env, tmp_path)
    try:
        await wait_ready(base, serve)

        async def follow(mode: str) -> int:
            # A fresh connection per job: the kernel spreads them over both API processes.
            async with httpx.AsyncClient(base_url=base, timeout=30) as c:
                r = await c.post("/jobs", json=REVIEW)
                assert r.status_code == 202, r.text
                result = await fl.follow(mode, c, base, r.json()["id"])
                assert len(result.ends) == 1
                return result.offset

        counts = await asyncio.gather(
            *(follow(mode) for mode in MODES for _ in range(JOBS_PER_MODE))
        )
        jobs = len(counts)
        tokens = {m: sum(counts[i * JOBS_PER_MODE : (i + 1) * JOBS_PER_MODE]) for i, m in
                  enumerate(MODES)}  # fmt: skip

        def complete(s: Samples) -> bool:
            return (
                value(s, "reviewstream_jobs_created_total") == jobs
                and value(s, "reviewstream_jobs_ended_total", status="done") == jobs
                and value(s, "reviewstream_job_attempts_total") == jobs
                and value(
                    s, "reviewstream_provider_first_token_seconds_count", provider="simulated"
                )
                == jobs  # fmt: skip
                and all(
                    value(s, "reviewstream_delivered_tokens_total", mode=m) == tokens[m]
                    for m in MODES
                )
            )

        pids: set[int] = set()
        for _ in range(40):  # until both API processes have answered with every count
            async with httpx.AsyncClient(base_url=base, timeout=30) as fresh:
                await until(fresh, complete, within=20)
                match = PID.search((await fresh.get("/metrics")).text)
                assert match is not None
                pids.add(int(match.group(1)))
            if len(pids) == 2:
                break
        assert len(pids) == 2, "one API process answered every scrape"
    finally:
        await stop_all([serve])


async def test_a_worker_on_its_own_serves_its_series(
    redis_url: str, settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    env = environment(redis_url, {"metrics_port": str(port), "sim_tokens_per_second": "300"})
    worker = await start("worker", ["worker"], env, tmp_path)
    try:
        await wait_log(worker, "worker metrics on port")
        api = live.tuned(settings, worker_heartbeat_timeout_seconds=3)
        async with serve(create_app(api, run_worker=False)) as base:
            async with httpx.AsyncClient(base_url=base, timeout=30) as c:
                await wait_ready(base, worker)
                job = await live.new_job(c)
                assert (await fl.long_poll(c, job)).ends[0]["status"] == "done"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as w:
            await until(
                w,
                lambda s: (
                    value(s, "reviewstream_jobs_ended_total", status="done") == 1
                    and value(s, "reviewstream_job_attempts_total") == 1
                    and value(
                        s, "reviewstream_provider_first_token_seconds_count", provider="simulated"
                    )
                    == 1
                ),  # fmt: skip
            )
    finally:
        await stop_all([worker])
