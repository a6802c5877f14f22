"""The system under test: a redis-server and a ``reviewstream serve`` started by the benchmark
(or a server somewhere else, by URL), and what can be read from them: CPU time and memory from
``/proc``, Redis command counts from ``INFO commandstats``.

With ``--redis-url`` the started server uses that Redis (or Redis Cluster) instead of a private
redis-server: its command counts are summed over the masters; its CPU is unknown (``None``). Each
server configuration then gets its own key prefix (``bench-<random>``), so runs do not see each
other's jobs; their data expires by retention.

Both children are started with ``PR_SET_PDEATHSIG``, so they die with the benchmark even when it
is killed. The server runs in a private working directory (no ``.env`` from the caller's) with
only the ``REVIEWSTREAM_*`` variables the benchmark sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import resource
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import httpx
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from ..processes.redis_server import redis_server_binary
from .plan import ServerConfig

log = logging.getLogger(__name__)

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# Commands the benchmark itself sends to Redis (and a cluster client's topology reads); never
# counted against the server. Redis 7 names subcommands ``client|setinfo``: the part before ``|``.
BENCH_COMMANDS = frozenset(
    {"info", "psubscribe", "punsubscribe", "ping", "hello", "client", "cluster", "command"}
)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def raise_open_files_limit() -> int:
    """Raise this process's open-files limit to its hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
    return soft


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds of process ``pid`` (its live threads), from /proc.

    ``schedstat`` counts in nanoseconds; ``stat`` only in clock ticks, too coarse for a short
    run. ``stat`` is the fallback.
    """
    total = 0
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            with open(f"{task.path}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def descendants_of(pid: int) -> list[int]:
    """The processes below ``pid``, from /proc: ``serve``'s worker process by default, and its
    API processes with ``--processes N``."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, below = [], [pid]
    while below:
        children = parents.get(below.pop(), [])
        found += children
        below += children
    return found


def is_worker(pid: int) -> bool:
    """True for a ``reviewstream worker`` process (where ``serve`` runs its workers by default)."""
    try:
        return b"reviewstream\0worker\0" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def server_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of the server: process ``pid`` and every process below it, so that producing
    counts wherever ``serve`` runs its workers (``REVIEWSTREAM_SERVE_WORKERS``) and every API
    process counts (``--processes N``)."""
    own = cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(cpu_seconds(child) or 0.0 for child in descendants_of(pid))


def worker_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of the ``reviewstream worker`` processes below ``pid`` (``serve``'s worker
    process, by default); ``None`` when it has none (its workers run in its API processes)."""
    workers = [child for child in descendants_of(pid) if is_worker(child)]
    return sum(cpu_seconds(w) or 0.0 for w in workers) if workers else None


def rss_bytes(pid: int) -> int | None:
    """Resident set size of process ``pid``, from /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def client_cpu_seconds() -> float:
    """CPU seconds the benchmark process itself has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def copy_log(log: Path, to: Path) -> None:
    """Copy a child's log to where the results go, unless it is empty (quietly: a missing log
    is no error)."""
    with contextlib.suppress(OSError):
        if not log.stat().st_size:
            return
        to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, to)


def log_tail(path: Path | None, chars: int = 800) -> str:
    """The end of a child's log, to explain why it died."""
    return path.read_text(errors="replace")[-chars:] if path is not None and path.exists() else ""


def _log_file(path: Path) -> BinaryIO:
    return open(path, "ab")


async def start_process(
    argv: list[str], env: dict[str, str], cwd: str, log_path: Path
) -> asyncio.subprocess.Process:
    """Start a child that dies with the benchmark, its output appended to ``log_path``."""
    with _log_file(log_path) as out:  # the child holds its own descriptor
        return await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )


async def stop_process(process: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            async with asyncio.timeout(grace):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


class ExternalRedis:
    """A Redis the benchmark did not start (``--redis-url``), or a Redis Cluster: command counts
    summed over its masters (replicas only repeat their writes); its CPU is unknown (``None``:
    other clients may use it too)."""

    client: aioredis.Redis | None = None  # no end watcher: the server's keys are prefixed

    def __init__(self, url: str, *, cluster: bool = False) -> None:
        self.url = url
        self.cluster = cluster
        self._single: aioredis.Redis | None = None
        self._cluster: RedisCluster | None = None

    async def start(self) -> None:
        if self.cluster:
            self._cluster = RedisCluster.from_url(self.url, decode_responses=True)
            await self._cluster.initialize()
        else:
            self._single = aioredis.Redis.from_url(self.url, decode_responses=True)
            await self._single.ping()

    async def commandstats(self) -> dict[str, int]:
        """Calls per command since each node started, summed (the benchmark's own excluded)."""
        calls: dict[str, int] = {}
        if self._cluster is not None:
            for node in self._cluster.get_primaries():
                counted_calls(await self._cluster.info("commandstats", target_nodes=node), calls)
        elif self._single is not None:
            counted_calls(await self._single.info("commandstats"), calls)
        return calls

    async def cpu_seconds(self) -> float | None:
        return None

    async def aclose(self) -> None:
        for client in (self._cluster, self._single):
            if client is not None:
                await client.aclose()
        self._cluster = self._single = self.client = None


class RedisProcess(ExternalRedis):
    """A private redis-server on a unix socket (as ``reviewstream serve`` embeds by default);
    its CPU from ``INFO cpu`` (``used_cpu_sys`` + ``used_cpu_user``: all its threads)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.socket = str(workdir / "redis.sock")
        super().__init__(f"unix://{self.socket}")
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self) -> None:
        argv = [
            redis_server_binary(), "--port", "0", "--unixsocket", self.socket,
            "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
            "--dir", str(self.workdir), "--loglevel", "warning",
        ]  # fmt: skip
        self.process = await start_process(
            argv, dict(os.environ), str(self.workdir), self.workdir / "redis.log"
        )
        self.client = self._single = aioredis.Redis.from_url(self.url, decode_responses=True)
        async with asyncio.timeout(10):
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}")
                with contextlib.suppress(RedisError, OSError):
                    if await self.client.ping():
                        return
                await asyncio.sleep(0.02)

    async def cpu_seconds(self) -> float | None:
        if self.client is None:
            return None
        info = await self.client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    async def aclose(self) -> None:
        await super().aclose()
        if self.process is not None:
            await stop_process(self.process, 5)
            self.process = None


def counted_calls(info: dict[str, object], into: dict[str, int]) -> dict[str, int]:
    """Add the calls per command of one node's ``INFO commandstats`` to ``into`` (the
    benchmark's own commands excluded)."""
    for key, value in info.items():
        name = key.removeprefix("cmdstat_").lower()
        if name.split("|")[0] not in BENCH_COMMANDS and isinstance(value, dict):
            into[name] = into.get(name, 0) + int(value.get("calls", 0))
    return into


@dataclass
class System:
    """The server under test: its URL, and its processes when the benchmark started them."""

    base_url: str
    server_pid: int | None = None
    redis: RedisProcess | ExternalRedis | None = None


@dataclass
class Sample:
    """Counters at one moment (CPU in seconds: the server's processes, its worker processes
    among them, Redis by ``INFO cpu``, the benchmark's own)."""

    server_cpu: float | None
    worker_cpu: float | None
    redis_cpu: float | None
    client_cpu: float
    commands: dict[str, int] = field(default_factory=dict)


async def sample(system: System) -> Sample:
    """Read the system's counters now."""
    redis = system.redis
    commands = await redis.commandstats() if redis is not None else {}
    pid = system.server_pid
    return Sample(
        server_cpu=server_cpu_seconds(pid) if pid else None,
        worker_cpu=worker_cpu_seconds(pid) if pid else None,
        redis_cpu=await redis.cpu_seconds() if redis is not None else None,
        client_cpu=client_cpu_seconds(),
        commands=commands,
    )


def _env(
    config: ServerConfig, redis_url: str, worker_concurrency: int, extra: dict[str, str]
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVIEWSTREAM_")}
    env.update(
        {
            "REVIEWSTREAM_REDIS_URL": redis_url,
            "REVIEWSTREAM_PROVIDER": "simulated",
            "REVIEWSTREAM_SIM_TOKENS_PER_SECOND": f"{config.rate:g}",
            "REVIEWSTREAM_SIM_FIRST_TOKEN_MS": f"{config.first_token_ms:g}",
            "REVIEWSTREAM_COALESCE_MS": f"{config.coalesce_ms:g}",
            "REVIEWSTREAM_WORKER_CONCURRENCY": str(worker_concurrency),
        }
    )
    env.update(extra)
    return env


def free_port() -> int:
    """A free TCP port on loopback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_healthy(
    base_url: str,
    process: asyncio.subprocess.Process | None,
    seconds: float,
    log_path: Path | None = None,
) -> None:
    """Wait until ``/healthz`` answers 200 (or the process dies)."""
    async with httpx.AsyncClient(timeout=2) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if process is not None and process.returncode is not None:
                raise RuntimeError(f"server exited with {process.returncode}: {log_tail(log_path)}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(base_url + "/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{base_url}/healthz did not answer within {seconds:g} s")


@contextlib.asynccontextmanager
async def started_system(
    config: ServerConfig,
    *,
    worker_concurrency: int = 256,
    extra_env: dict[str, str] | None = None,
    graceful_seconds: float = 2.0,
    keep_log: Path | None = None,
    processes: int = 1,
    redis_url: str | None = None,
    redis_cluster: bool = False,
    queue_shards: int = 1,
) -> AsyncIterator[System]:
    """A fresh redis-server and ``reviewstream serve`` with ``config``; stopped on exit.

    ``keep_log``: where to copy the server's log (its warnings explain failed jobs);
    ``processes``: its API processes (``serve --processes``; workers placed as ``serve`` places
    them: one worker process for all, by default); ``redis_url``: a Redis to use instead of a
    fresh one (``redis_cluster``: a Redis Cluster), under a key prefix of this start's own;
    ``queue_shards``: ``REVIEWSTREAM_QUEUE_SHARDS``."""
    workdir = Path(tempfile.mkdtemp(prefix="reviewstream-bench-"))
    redis: RedisProcess | ExternalRedis = (
        RedisProcess(workdir)
        if redis_url is None
        else ExternalRedis(redis_url, cluster=redis_cluster)
    )
    server: asyncio.subprocess.Process | None = None
    extra = {"REVIEWSTREAM_QUEUE_SHARDS": str(queue_shards), **(extra_env or {})}
    if redis_url is not None:
        extra.setdefault("REVIEWSTREAM_KEY_PREFIX", f"bench-{secrets.token_hex(4)}")
        if redis_cluster:
            extra["REVIEWSTREAM_REDIS_CLUSTER"] = "true"
    try:
        await redis.start()
        port = free_port()
        log_path = workdir / "server.log"
        argv = [
            sys.executable, "-m", "reviewstream", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning",
            "--graceful-timeout", f"{graceful_seconds:g}", "--processes", str(processes),
        ]  # fmt: skip
        env = _env(config, redis.url, worker_concurrency, extra)
        server = await start_process(argv, env, str(workdir), log_path)
        base_url = f"http://127.0.0.1:{port}"
        await wait_healthy(base_url, server, 60, log_path)
        yield System(base_url, server.pid, redis)
    finally:
        if server is not None:
            await stop_process(server, graceful_seconds + 5)
        await redis.aclose()
        if keep_log is not None:
            copy_log(workdir / "server.log", keep_log)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.asynccontextmanager
async def remote_system(url: str) -> AsyncIterator[System]:
    """A server the benchmark did not start: no CPU, memory or Redis figures."""
    base = url.rstrip("/")
    await wait_healthy(base, None, 10)
    yield System(base)
