"""Real reviewstream processes for tests: ``serve`` and ``worker`` started with ``python -m
reviewstream``, their output in a log file each (printed by ``stop_all``, which pytest shows when
a test fails), stopped with SIGTERM and, past a bound, SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

SRC = Path(__file__).resolve().parents[2] / "src"
STARTUP_SECONDS = 30.0  # three interpreters importing at once on a busy 2-core machine


@dataclass
class Process:
    name: str
    proc: asyncio.subprocess.Process
    log: Path


def environment(redis_url: str, settings: dict[str, str]) -> dict[str, str]:
    """This environment without REVIEWSTREAM_* variables, then Redis, quick test defaults and
    ``settings`` (lower-case setting names) on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVIEWSTREAM_")}
    quick = {
        "worker_heartbeat_timeout_seconds": "3",
        "worker_grace_seconds": "0.2",
        "sim_first_token_ms": "10",
    }
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
        REVIEWSTREAM_REDIS_URL=redis_url,
        **{f"REVIEWSTREAM_{k.upper()}": v for k, v in {**quick, **settings}.items()},
    )
    return env


async def start(name: str, args: list[str], env: dict[str, str], logs: Path) -> Process:
    log = logs / f"{name}.log"
    with log.open("wb") as out:  # the child holds its own descriptor
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "reviewstream", *args,
            cwd=logs,  # no stray .env file is read
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    return Process(name, proc, log)


async def stop(p: Process) -> None:
    if p.proc.returncode is None:
        p.proc.terminate()
        try:
            await asyncio.wait_for(p.proc.wait(), 5)
        except TimeoutError:
            p.proc.kill()
            await p.proc.wait()


async def wait_ready(base: str, p: Process) -> None:
    """Until ``/readyz`` answers 200: the API is up and the worker's heartbeat is fresh."""
    deadline = time.monotonic() + STARTUP_SECONDS
    async with httpx.AsyncClient(base_url=base, timeout=2) as c:
        while True:
            if p.proc.returncode is not None:
                raise AssertionError(f"{p.name} exited with {p.proc.returncode} before ready")
            with contextlib.suppress(httpx.TransportError):
                if (await c.get("/readyz")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"{p.name} not ready within {STARTUP_SECONDS:g} s")
            await asyncio.sleep(0.1)


async def stop_all(processes: list[Process]) -> None:
    await asyncio.gather(*(stop(p) for p in processes))
    for p in processes:  # shown by pytest only when the test failed
        print(f"----- {p.name} (exit {p.proc.returncode}) -----")
        print(p.log.read_text(errors="replace")[-20_000:])


async def wait_log(p: Process, text: str, within: float = STARTUP_SECONDS) -> None:
    """Until ``text`` appears in the process's log (e.g. a worker saying it runs)."""
    deadline = time.monotonic() + within
    while text not in p.log.read_text(errors="replace"):
        if p.proc.returncode is not None:
            raise AssertionError(f"{p.name} exited with {p.proc.returncode} before {text!r}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{p.name} did not log {text!r} within {within:g} s")
        await asyncio.sleep(0.05)


def exit_seconds(p: Process, since: float, within: float = 30.0) -> float:
    """Seconds from ``since`` (monotonic) until the process has exited, watched from a thread at
    10 ms steps (blocking: call with ``asyncio.to_thread``), so that a busy test event loop
    does not add its own delay to the figure."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(p.proc.pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.01)
    return time.monotonic() - since
