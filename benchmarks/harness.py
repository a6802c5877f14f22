"""What the scripts in ``benchmarks/`` share, on top of ``reviewstream.bench``.

``reviewstream bench`` already has the pieces a measurement needs: lean clients and followers
(``conn``, ``followers``), the server under test and its counters (``server``), statistics
(``stats``), what the machine is (``machine``). The scripts here use those directly; this module
adds only what scripts need beyond one ``reviewstream bench`` run:

- **children**: processes a script starts and signals itself (``Children``, ``Child``), each
  started as ``reviewstream.bench.server`` starts its own (it dies with the script, its output
  goes to a log), with the environment of a reviewstream child (``child_env``);
- **waiting**: ``until`` (a check polled to a deadline), ``wait_healthy``, ``wait_ready``;
  ``Failure`` is a step the script could not carry out, which is not a finding about the service;
- **a script's frame**: ``say`` (progress on stderr), ``machine`` (what it ran on, to put beside
  its figures), ``command`` (how it was run), ``run`` (the event loop, and a clean stop on
  SIGTERM or Ctrl-C).

A script runs whatever ``reviewstream`` Python imports (``PYTHONPATH=some/src`` to measure
another tree), and so do the children it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx

import reviewstream
from reviewstream.bench.machine import describe
from reviewstream.bench.server import start_process, stop_process
from reviewstream.bench.server import wait_healthy as _wait_healthy
from reviewstream.bench.suite import stderr_progress as say
from reviewstream.processes.loops import run as run_loop

__all__ = [
    "STARTUP_SECONDS", "Child", "Children", "Failure", "child_env", "command", "machine", "run",
    "say", "until", "wait_healthy", "wait_ready",
]  # fmt: skip

T = TypeVar("T")
SRC = Path(reviewstream.__file__).resolve().parents[1]
# A Python process importing the app, on a machine busy with the benchmark itself.
STARTUP_SECONDS = 30.0


class Failure(Exception):
    """The script could not carry out a step (not a finding about the service)."""


async def until(check: Callable[[], Awaitable[T | None]], within: float, what: str) -> T:
    """``check()``'s first truthy answer, polled every 20 ms; ``Failure`` after ``within`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        answer = await check()
        if answer:
            return answer
        if loop.time() > deadline:
            raise Failure(f"{what}: not within {within:g} s")
        await asyncio.sleep(0.02)


def child_env(settings: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a reviewstream child: this one without ``REVIEWSTREAM_*`` variables
    (the caller's settings stay out), ``settings`` as ``REVIEWSTREAM_<NAME>``, and a
    ``PYTHONPATH`` that leads to the reviewstream this script imports (children run in
    directories of their own, where a relative path would lead nowhere)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVIEWSTREAM_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update({f"REVIEWSTREAM_{k.upper()}": v for k, v in (settings or {}).items()})
    return env


@dataclass
class Child:
    """A process a script started, and the log its output goes to."""

    name: str
    process: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def signal(self, sig: int) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    async def stop(self, within: float = 5.0) -> None:
        """SIGTERM, then SIGKILL past ``within`` seconds."""
        await stop_process(self.process, within)

    async def kill(self) -> None:
        self.signal(signal.SIGKILL)
        await self.process.wait()


class Children:
    """The processes a script starts, each with its log in ``logs`` (``<name>-<n>.log``) and
    run there (no stray ``.env`` is read); ``aclose`` kills those still alive."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[Child] = []
        self._count: dict[str, int] = {}

    async def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> Child:
        n = self._count[name] = self._count.get(name, 0) + 1
        log = self.logs / f"{name}-{n}.log"
        env = dict(os.environ) if env is None else dict(env)
        process = await start_process(list(argv), env, str(self.logs), log)
        child = Child(f"{name}-{n}", process, log)
        self.started.append(child)
        return child

    async def reviewstream(self, name: str, *args: str, **settings: str) -> Child:
        """``python -m reviewstream <args>`` with ``settings`` (see ``child_env``)."""
        argv = [sys.executable, "-m", "reviewstream", *args]
        return await self.start(name, argv, child_env(settings))

    async def aclose(self) -> None:
        for child in self.started:
            child.signal(signal.SIGKILL)
        for child in self.started:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.process.wait(), 5)

    async def __aenter__(self) -> Children:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def wait_healthy(url: str, child: Child, within: float = STARTUP_SECONDS) -> None:
    """Until ``url/healthz`` answers 200; ``Failure`` if ``child`` exits first or it takes
    longer than ``within`` seconds."""
    try:
        await _wait_healthy(url, child.process, within, child.log)
    except RuntimeError as e:
        raise Failure(f"{child.name}: {e}") from None


async def wait_ready(url: str, within: float = STARTUP_SECONDS) -> None:
    """Until ``url/readyz`` answers 200: the service takes jobs (a worker is alive)."""
    async with httpx.AsyncClient(timeout=2) as client:

        async def ready() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return (await client.get(url + "/readyz")).status_code == 200
            return False

        await until(ready, within, f"{url}/readyz")


def machine(redis_version: str | None = None) -> dict[str, Any]:
    """What the figures were taken on (``reviewstream.bench.machine``), and how busy it was."""
    return {**describe(redis_version), "load_average": [round(x, 2) for x in os.getloadavg()]}


def command() -> str:
    """How this script was run, to put beside its figures."""
    return " ".join(["python", *sys.argv])


def run(main: Coroutine[Any, Any, int]) -> NoReturn:
    """Run a script's ``main`` and exit with its status. SIGTERM and Ctrl-C cancel it (its
    ``finally`` clauses stop what it started) and exit 130."""

    async def guarded() -> int:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await main

    try:
        sys.exit(run_loop(guarded()))
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("interrupted: every process started was stopped")
        sys.exit(130)
