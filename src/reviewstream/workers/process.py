"""The workers as a supervised child process: ``reviewstream worker`` beside the API.

The child starts with ``PR_SET_PDEATHSIG`` (``die_with_parent``), as the embedded redis-server
does, so that it goes with its parent even when the parent is killed with SIGKILL and never
runs its cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import sys
import time

from pydantic import SecretStr
from redis.exceptions import RedisError

from ..errors import StoreError
from ..processes.redis_server import die_with_parent
from ..settings import Settings
from ..store import WorkerRegistry

log = logging.getLogger(__name__)


def worker_environment(settings: Settings, redis_url: str) -> dict[str, str]:
    """This environment with every setting of ``settings`` on top, as its ``REVIEWSTREAM_``
    variable: the child runs with the parent's very settings (``--graceful-timeout`` included,
    and settings given in code, not only read from the environment), on ``redis_url``."""
    env = dict(os.environ)
    for name in Settings.model_fields:
        variable = f"REVIEWSTREAM_{name.upper()}"
        value = getattr(settings, name)
        if value is None:
            env.pop(variable, None)
        elif isinstance(value, SecretStr):
            env[variable] = value.get_secret_value()
        elif isinstance(value, bool):
            env[variable] = "true" if value else "false"
        else:
            env[variable] = str(value)
    env["REVIEWSTREAM_REDIS_URL"] = redis_url
    return env


class WorkerProcess:
    """``reviewstream worker`` as a child process of the API, on the same Redis.

    - It runs with the parent's settings (``worker_environment``) in a session of its own: a
      terminal's Ctrl-C reaches the parent, which forwards the shutdown. If the parent dies,
      even by SIGKILL, ``PR_SET_PDEATHSIG`` sends it SIGTERM: it stops claiming, hands running
      jobs over after the grace, and exits.
    - ``start()`` returns once its heartbeat is in Redis (its worker is named
      ``host:pid:…``), so the API is ready to take jobs as soon as it answers.
    - When it dies, it is logged as an error, its heartbeat is dropped at once (``/readyz``
      says so, unless another worker is alive) and a new one is started: at once, then after
      1 s, doubling up to 30 s while they keep dying. The dead one's jobs are requeued once
      their leases lapse, like any lost worker's.
    - ``begin_shutdown()`` forwards SIGTERM (the child's grace starts); ``aclose()`` waits for
      it to exit, SIGKILLs it past the grace plus ``STOP_MARGIN_SECONDS``.
    """

    STARTUP_SECONDS = 60.0  # an interpreter importing on a busy machine
    STOP_MARGIN_SECONDS = 5.0
    RESTART_MIN_SECONDS, RESTART_MAX_SECONDS = 1.0, 30.0  # backoff while restarts fail

    def __init__(self, url: str, settings: Settings, store: WorkerRegistry) -> None:
        self._url = url
        self._settings = settings
        self._store = store
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def running(self) -> int:
        return 0  # its jobs run in the child

    async def start(self) -> None:
        process = await self._spawn()
        try:
            await self._announced(process, self.STARTUP_SECONDS)
        except BaseException:
            await self._stop(process)
            raise
        self._supervisor = asyncio.create_task(self._supervise(), name="reviewstream-workers")

    def begin_shutdown(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()

    async def aclose(self) -> None:
        self.begin_shutdown()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._process is not None:
            await self._stop(self._process)

    async def _spawn(self) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "reviewstream", "worker",
            env=worker_environment(self._settings, self._url),
            stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
            start_new_session=True,
        )  # fmt: skip
        self._process = process
        if self._stopping.is_set():  # a shutdown began while it was being started
            process.terminate()
        log.info("worker process %d started", process.pid)
        return process

    async def _stop(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                async with asyncio.timeout(
                    self._settings.worker_grace_seconds + self.STOP_MARGIN_SECONDS
                ):
                    await process.wait()
            except TimeoutError:
                log.error("worker process %d did not stop: killing it", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
                await self._forget(process.pid)

    def _match(self, pid: int) -> str:
        return f"{socket.gethostname()}:{pid}:*"

    async def _announced(self, process: asyncio.subprocess.Process, seconds: float) -> None:
        """Until the child's heartbeat is in Redis; ``RuntimeError`` if it exits first."""
        deadline = time.monotonic() + seconds
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"the worker process exited with {process.returncode}")
            with contextlib.suppress(RedisError, OSError):
                async for _ in self._store.redis.zscan_iter(
                    self._store.keys.workers, match=self._match(process.pid)
                ):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker process did not start within {seconds:g} s")
            await asyncio.sleep(0.05)

    async def _forget(self, pid: int) -> None:
        """Drop a dead child's heartbeat, so that readiness does not count it any more."""
        with contextlib.suppress(RedisError, OSError, StoreError):
            names = [
                name  # zscan yields (member, score)
                async for name, _ in self._store.redis.zscan_iter(
                    self._store.keys.workers, match=self._match(pid)
                )
            ]
            for name in names:
                await self._store.forget_worker(str(name))

    async def _supervise(self) -> None:
        delay = 0.0
        while self._process is not None:
            process, since = self._process, time.monotonic()
            code = await process.wait()
            if self._stopping.is_set():
                return
            log.error(
                "worker process %d exited with %s while serving: no worker runs here until it"
                " is restarted; its running jobs are requeued when their leases lapse",
                process.pid,
                code,
            )
            await self._forget(process.pid)
            if time.monotonic() - since > 2 * self.RESTART_MAX_SECONDS:
                delay = 0.0  # it had been running well: restart at once
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
                if self._stopping.is_set():
                    return
                delay = min(max(2 * delay, self.RESTART_MIN_SECONDS), self.RESTART_MAX_SECONDS)
                try:
                    replacement = await self._spawn()
                except OSError as e:
                    log.error("restarting the worker process failed (%s): retrying", e)
                    continue
                try:
                    await self._announced(replacement, self.STARTUP_SECONDS)
                except RuntimeError as e:
                    log.error("the restarted worker process failed (%s): retrying", e)
                    await self._stop(replacement)
                    continue
                log.warning("worker process %d restarted", replacement.pid)
                break
