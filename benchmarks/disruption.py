"""Durable jobs under disruption, measured with real processes, real signals and a real Redis
restart: what each disruption does to a review being written and to the clients following it.

For each scenario the benchmark starts, on 127.0.0.1, its own redis-server (append-only file,
``appendfsync always``, so a restart keeps every acknowledged write), one ``reviewstream serve
--api-only`` and, for each run, fresh ``reviewstream worker`` processes (a short lease, a fast
reaper, the simulated model at ``PACE`` tokens/s). It creates a job, follows it in all four
modes at once (short poll, long poll, SSE, WebSocket: ``reviewstream bench``'s lean connections,
which here resume by offset and ride out 503s), disrupts the job's producer mid-review, and
records:

- the job's final status and attempts, the tokens stored before the disruption and at the end;
- per follower: gaps and duplicates against the stored tokens (by offset; both must be 0), its
  reconnections, and whether its one end record's ``sha256`` is the stored text's;
- whether the text is the uninterrupted review (the simulated model is deterministic);
- time to recover, on Redis' clock (each token's stored append time): from the disruption to
  the first token of the attempt that continues the job (``resume``) and to the job's end;
- for SIGTERM, the process's exit time after the signal against ``--graceful-timeout`` + 1 s.

Scenarios (``--scenarios``, comma-separated; all by default):

  kill-mid           worker SIGKILLed mid-review, a second worker alive
  kill-before-first  worker SIGKILLed after its claim, before its first token
  term-mid           worker SIGTERMed mid-review (--graceful-timeout 1), a second worker alive
  redis-restart      redis-server stopped for 5 s mid-review, restarted on the same port and
                     directory; plus a job created right after the restart
  kill-no-worker     only the API alive: the worker SIGKILLed; when followers hear ``queued``
  term-serve         ``serve`` (the API and its workers) SIGTERMed (--graceful-timeout 1)
                     mid-review, a standalone worker alive

    python benchmarks/disruption.py --runs 3 [--scenarios kill-mid,term-mid] [--output out.json]

It runs whatever ``reviewstream`` Python imports (``PYTHONPATH=some/src`` to measure a tree);
its processes are ``harness.Children``. The exit status is 1 if any run shows a defect (a gap,
a duplicate, a wrong digest, a job not done, an exit past its bound); the logs are then kept
and their path printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from harness import (
    STARTUP_SECONDS,
    Child,
    Children,
    Failure,
    command,
    machine,
    run,
    say,
    until,
    wait_healthy,
)
from redis.exceptions import RedisError

from reviewstream.bench.conn import Endpoint, HttpConnection, WebSocketConnection
from reviewstream.bench.followers import SseReader
from reviewstream.bench.server import descendants_of, free_port
from reviewstream.bench.suite import redis_version
from reviewstream.keys import Keys
from reviewstream.processes.redis_server import redis_server_binary
from reviewstream.store import text_digest

PACE = 30.0  # tokens/s of the simulated model
FIRST_TOKEN_MS = 200.0  # its time to first token, on every attempt
LEASE_SECONDS = 2.0
REAP_INTERVAL_SECONDS = 0.2
GRACE_SECONDS = 1.0  # --graceful-timeout of the SIGTERMed processes
EXIT_SLACK_SECONDS = 1.0  # "the process exits within about a second more" (README)
OUTAGE_SECONDS = 5.0
DISRUPT_AT = 20  # tokens stored when the disruption comes: early in the review
REVIEW = {
    "employee_name": "Katherine Johnson",
    "employee_review_points": "Trajectory analysis; mentoring; clear writing; could delegate",
    "length_words": 60,
}
SHORT_POLL_INTERVAL = 0.1
LONG_POLL_TIMEOUT = 5.0
JOB_SECONDS = 60.0  # bound on any job's end
FOLLOWER_SECONDS = 20.0  # bound on the followers' ends once the job has ended
MODES = ("short_poll", "long_poll", "sse", "websocket")
KEYS = Keys("rs")


# -- processes ------------------------------------------------------------------------------


class Lab:
    """One scenario's processes: redis-server, an API-only server and the runs' workers."""

    def __init__(self, logs: Path) -> None:
        self.children = Children(logs)
        self.redis_port = free_port()
        self.api_port = free_port()
        self.redis_dir = logs / "redis-data"
        self.redis_dir.mkdir(parents=True)
        self.redis_proc: Child | None = None
        self.redis: aioredis.Redis | None = None
        self.reference: list[str] | None = None  # the uninterrupted review's tokens

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def db(self) -> aioredis.Redis:
        if self.redis is None:
            raise Failure("redis-server is not running")
        return self.redis

    def settings(self, **overrides: str) -> dict[str, str]:
        """The scenario's settings of every reviewstream process, then ``overrides``."""
        return {
            "redis_url": self.redis_url,
            "lease_seconds": f"{LEASE_SECONDS:g}",
            "reap_interval_seconds": f"{REAP_INTERVAL_SECONDS:g}",
            "claim_idle_seconds": "3",
            "worker_grace_seconds": f"{GRACE_SECONDS:g}",
            "sim_tokens_per_second": f"{PACE:g}",
            "sim_first_token_ms": f"{FIRST_TOKEN_MS:g}",
            **overrides,
        }

    async def start_redis(self) -> None:
        """redis-server on the lab's port and directory, the same after a restart."""
        argv = [
            redis_server_binary(), "--port", str(self.redis_port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "yes", "--appendfsync", "always",
            "--dir", str(self.redis_dir),
        ]  # fmt: skip
        self.redis_proc = await self.children.start("redis", argv)
        self.redis = aioredis.Redis(
            host="127.0.0.1", port=self.redis_port, decode_responses=True, socket_timeout=5
        )

        async def pong() -> bool:
            if self.redis_proc is not None and not self.redis_proc.alive:
                raise Failure(f"redis-server exited; see {self.redis_proc.log}")
            with contextlib.suppress(RedisError, OSError):
                return bool(await self.db.ping())
            return False

        await until(pong, 10, "redis-server answering")

    async def stop_redis(self) -> None:
        """SIGTERM (it flushes its append-only file and exits), bounded."""
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None
        if self.redis_proc is not None:
            await self.redis_proc.stop(10)

    async def start_api(self) -> Child:
        args = ["serve", "--api-only", "--port", str(self.api_port), "--log-level", "warning"]
        api = await self.children.reviewstream("api", *args, **self.settings())
        await wait_healthy(self.api_url, api)
        return api

    async def start_worker(self, *args: str, **settings: str) -> Child:
        """``reviewstream worker``, once its heartbeat is in Redis (ready to claim)."""
        worker = await self.children.reviewstream(
            "worker", "worker", *args, **self.settings(**settings)
        )
        await self.wait_heartbeat(worker)
        return worker

    async def start_serve(self, *args: str, **settings: str) -> tuple[Child, str]:
        """``reviewstream serve`` with its in-process worker, on a port of its own."""
        port = free_port()
        argv = ["serve", "--port", str(port), "--log-level", "warning", *args]
        serve = await self.children.reviewstream("serve", *argv, **self.settings(**settings))
        url = f"http://127.0.0.1:{port}"
        await wait_healthy(url, serve)
        await self.wait_heartbeat(serve)
        return serve, url

    async def wait_heartbeat(self, proc: Child) -> None:
        """Until a worker of ``proc`` (``host:pid:id``: its own pid, or a child's when ``serve``
        runs its workers in a process) is in the heartbeat set."""

        async def beating() -> bool:
            if not proc.alive:
                raise Failure(f"{proc.name} exited with {proc.process.returncode}; see {proc.log}")
            members = await self.db.zrange(KEYS.workers, 0, -1)
            return any(_pid_of(str(m)) in _tree(proc) for m in members)

        await until(beating, STARTUP_SECONDS, f"{proc.name}'s heartbeat")

    def owner_of(self, owner: str, candidates: Sequence[Child]) -> Child:
        """The process whose worker holds ``owner`` (``host:pid:id#attempt``)."""
        pid = _pid_of(owner.rsplit("#", 1)[0])
        for proc in candidates:
            if pid in _tree(proc):
                return proc
        raise Failure(f"owner {owner!r} is none of {[p.name for p in candidates]}")

    async def stop_workers(self) -> None:
        """The runs' survivors: SIGTERM, bounded."""
        mine = [
            p for p in self.children.started
            if p.alive and p.name.split("-")[0] in ("worker", "serve")
        ]  # fmt: skip
        await asyncio.gather(*(p.stop() for p in mine))

    async def aclose(self) -> None:
        await self.children.aclose()
        if self.redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.redis.aclose()

    def log_sizes(self) -> dict[Path, int]:
        return {p.log: p.log.stat().st_size for p in self.children.started if p.log.exists()}

    def log_lines_since(self, sizes: dict[Path, int]) -> list[str]:
        """WARNING/ERROR lines and tracebacks the service logged since ``sizes``."""
        lines: list[str] = []
        for proc in self.children.started:
            if proc.name.startswith("redis") or not proc.log.exists():
                continue
            with proc.log.open("rb") as f:
                f.seek(sizes.get(proc.log, 0))
                text = f.read().decode(errors="replace")
            for line in text.splitlines():
                if "REVIEWSTREAM_API_KEYS is unset" in line:
                    continue  # open mode, on purpose
                if any(k in line for k in (" WARNING ", " ERROR ", "Traceback", "CRITICAL")):
                    lines.append(f"{proc.name}: {line}")
        return lines


def _pid_of(worker: str) -> int:
    """The pid in a worker's name (``host:pid:id``)."""
    return int(worker.split(":")[-2])


def _tree(proc: Child) -> set[int]:
    return {proc.pid, *descendants_of(proc.pid)}


# -- followers ------------------------------------------------------------------------------


@dataclass
class Follower:
    """What one follower received, by offset, and when it heard of the job's status."""

    mode: str
    batches: list[tuple[int, list[str]]] = field(default_factory=list)
    ends: list[dict[str, Any]] = field(default_factory=list)
    notices: list[dict[str, Any]] = field(default_factory=list)  # SSE/WebSocket, with "t"
    # (time, status, attempt) each time either changed, as this follower learned it.
    states: list[tuple[float, str, int]] = field(default_factory=list)
    next_offset: int = 0
    connections: int = 0  # streams opened, or poll answers
    refusals: int = 0  # 503s and connection errors ridden out
    drops: list[str] = field(default_factory=list)  # streams that ended without an end
    error: str | None = None

    def take(self, offset: int, tokens: list[str]) -> None:
        self.batches.append((offset, list(tokens)))
        self.next_offset = offset + len(tokens)

    def saw(self, status: str, attempt: int) -> None:
        if not self.states or self.states[-1][1:] != (status, attempt):
            self.states.append((time.time(), status, attempt))

    def notice(self, notice: dict[str, Any]) -> None:
        self.notices.append({**notice, "t": time.time()})
        self.saw(str(notice["status"]), int(notice["attempt"]))

    def first_seen(self, status: str, after: float) -> float | None:
        return next((t for t, s, _ in self.states if s == status and t >= after), None)

    def heard_change(self, after: float) -> float | None:
        """When this follower first learned, after ``after``, that the job's producer changed:
        the job queued again, or a later attempt running (notices of one instant may arrive
        as the latest only)."""
        before = max([a for t, _, a in self.states if t < after], default=1)
        return next(
            (t for t, s, a in self.states if t >= after and (s == "queued" or a > before)), None
        )


async def poll(endpoint: Endpoint, job_id: str, f: Follower, *, long: bool) -> None:
    """A short or long poller: keeps its offset, rides out 503s and dropped connections."""
    path = f"/jobs/{job_id}/long-poll" if long else f"/jobs/{job_id}"
    wait = f"&timeout={LONG_POLL_TIMEOUT:g}" if long else ""
    conn: HttpConnection | None = None
    try:
        while True:
            try:
                if conn is None or not conn.is_open:
                    conn = await HttpConnection.open(endpoint)
                response = conn.request("GET", f"{path}?offset={f.next_offset}{wait}")
                await response.done
            except OSError:
                f.refusals += 1
                await asyncio.sleep(0.1)
                continue
            if response.status == 503:
                f.refusals += 1
                await asyncio.sleep(0.1)
                continue
            if response.status != 200:
                raise Failure(f"{f.mode}: {response.status} {_text(response.body)}")
            f.connections += 1
            page = json.loads(response.body)
            f.take(int(page["offset"]), page["tokens"])
            f.saw(str(page["status"]), int(page["attempts"]))
            if page["done"]:
                f.ends.append(page)
                return
            if not long:
                await asyncio.sleep(SHORT_POLL_INTERVAL)
    finally:
        if conn is not None:
            conn.close()


def _text(body: bytes | bytearray) -> str:
    return bytes(body[:300]).decode(errors="replace")


class _Events(SseReader):
    """reviewstream's SSE events, into a follower."""

    def __init__(self, f: Follower, ended: asyncio.Future[None]) -> None:
        super().__init__()
        self.f = f
        self.ended = ended

    def on_event(self, event: str, data: list[bytes], now: float) -> None:
        payload = b"\n".join(data)
        if event == "token":
            message = json.loads(payload)
            self.f.take(int(message["offset"]), message["tokens"])
        elif event == "status":
            self.f.notice(json.loads(payload))
        elif event == "end":
            self.f.ends.append(json.loads(payload))
            if not self.ended.done():
                self.ended.set_result(None)
        elif event == "error":
            self.f.drops.append(f"error event: {_text(payload)}")


async def sse(endpoint: Endpoint, job_id: str, f: Follower) -> None:
    """An SSE follower that reconnects from its offset when a stream ends without an end."""
    while True:
        if await _sse_stream(endpoint, job_id, f):
            return
        await asyncio.sleep(0.1)


async def _sse_stream(endpoint: Endpoint, job_id: str, f: Follower) -> bool:
    """One SSE response from the follower's offset; True once it delivered the end."""
    ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    reader = _Events(f, ended)
    conn: HttpConnection | None = None

    def on_body(data: bytes, now: float) -> None:
        if response.status == 200:
            reader.feed(data, now)
        else:
            response.body += data

    try:
        conn = await HttpConnection.open(endpoint)
        target = f"/jobs/{job_id}/events?offset={f.next_offset}"
        headers = {"Accept": "text/event-stream"}
        response = conn.request("GET", target, headers=headers, on_body=on_body)
        status = await response.headers
        if status == 503:
            f.refusals += 1
            return False
        if status != 200:
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(asyncio.shield(response.done), 1.0)
            raise Failure(f"sse: {status} {_text(response.body)}")
        f.connections += 1
        await asyncio.wait([ended, response.done], return_when=asyncio.FIRST_COMPLETED)
        if ended.done():
            return True
        cut = response.done.exception()
        if cut is not None:
            f.refusals += 1
            f.drops.append(f"{type(cut).__name__}: {cut}")
        else:
            f.drops.append("stream closed without an end")
    except OSError as e:
        f.refusals += 1
        f.drops.append(f"{type(e).__name__}: {e}")
    finally:
        if conn is not None:
            conn.close()
        if not ended.done():
            ended.cancel()
    return False


async def websocket(endpoint: Endpoint, job_id: str, f: Follower) -> None:
    """A WebSocket follower that reconnects from its offset when closed before the end."""
    while True:
        if await _websocket_session(endpoint, job_id, f):
            return
        await asyncio.sleep(0.1)


async def _websocket_session(endpoint: Endpoint, job_id: str, f: Follower) -> bool:
    """One WebSocket session from the follower's offset; True once it delivered the end."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def on_message(payload: bytes, now: float) -> None:
        message = json.loads(payload)
        if message["type"] == "tokens":
            f.take(int(message["offset"]), message["tokens"])
        elif message["type"] == "status":
            f.notice(message)
        elif message["type"] == "end":
            f.ends.append(message)
            if not ended.done():
                ended.set_result(None)

    conn = WebSocketConnection(endpoint, f"/jobs/{job_id}/ws?offset={f.next_offset}", on_message)
    try:
        await loop.create_connection(lambda: conn, endpoint.host, endpoint.port)
        await conn.handshake
        f.connections += 1
        await asyncio.wait([ended, conn.closed], return_when=asyncio.FIRST_COMPLETED)
        if ended.done():
            return True
        f.drops.append(f"closed without an end: {conn.close_code}")
    except OSError as e:
        if conn.status not in (0, 503):
            raise Failure(f"websocket: handshake answered {conn.status}") from e
        f.refusals += 1
        if conn.status != 503:
            f.drops.append(f"{type(e).__name__}: {e}")
    finally:
        conn.close()
        if not ended.done():
            ended.cancel()
    return False


def audit(f: Follower, stored: list[str], digest: str) -> dict[str, Any]:
    """The follower's tokens against the stored ones, offset by offset."""
    seen = [0] * len(stored)
    beyond = wrong = 0
    for offset, tokens in f.batches:
        for i, token in enumerate(tokens):
            at = offset + i
            if 0 <= at < len(stored):
                seen[at] += 1
                wrong += token != stored[at]
            else:
                beyond += 1
    end = f.ends[-1] if f.ends else {}
    return {
        "gaps": seen.count(0),
        "dupes": sum(n - 1 for n in seen if n > 1) + beyond,
        "wrong": wrong,
        "ends": len(f.ends),
        "sha256_ok": len(f.ends) == 1 and end.get("sha256") == digest,
        "end_status": end.get("status"),
        "connections": f.connections,
        "refusals": f.refusals,
        "drops": f.drops[:5],
        "notices": [
            {k: n.get(k) for k in ("status", "attempt", "offset", "reason")} for n in f.notices
        ],
        "error": f.error,
    }


# -- one run --------------------------------------------------------------------------------


@dataclass
class Exit:
    """A SIGTERMed process: how long it took to exit, against its bound."""

    seconds: float
    code: int | None
    bound: float
    handed_over: bool


class Trial:
    """One run of a scenario: a job, its four followers, the disruption and what followed."""

    def __init__(self, lab: Lab, scenario: str, run: int) -> None:
        self.lab = lab
        self.scenario = scenario
        self.run = run
        self.client = httpx.AsyncClient(
            base_url=lab.api_url, timeout=httpx.Timeout(30.0, connect=5.0)
        )
        self.job_id = ""
        self.followers: dict[str, Follower] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.disrupted_at: float | None = None  # epoch seconds, the clock Redis stamps with
        self.exit: Exit | None = None
        self.extra: dict[str, Any] = {}
        self.defects: list[str] = []
        self.log_marks = lab.log_sizes()

    async def aclose(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await self.client.aclose()

    async def create(self) -> str:
        """A job (POST retried while refused: no worker yet, or Redis away), then followers."""
        self.job_id = await post_job(self.client, REVIEW)
        for mode in MODES:
            f = self.followers[mode] = Follower(mode)
            self.tasks[mode] = asyncio.create_task(self._follow(f), name=f"follow-{mode}")
        return self.job_id

    async def _follow(self, f: Follower) -> None:
        endpoint = Endpoint.from_url(self.lab.api_url)
        try:
            if f.mode in ("short_poll", "long_poll"):
                await poll(endpoint, self.job_id, f, long=f.mode == "long_poll")
            elif f.mode == "sse":
                await sse(endpoint, self.job_id, f)
            else:
                await websocket(endpoint, self.job_id, f)
        except asyncio.CancelledError:
            f.error = f.error or "cancelled before its end"
            raise
        except Exception as e:
            f.error = f"{type(e).__name__}: {e}"

    async def meta(self, *fields: str) -> list[str | None]:
        values: list[Any] = await self.lab.db.hmget(KEYS.meta(self.job_id), list(fields))
        return [None if v is None else str(v) for v in values]

    async def count(self) -> int:
        return int(await self.lab.db.llen(KEYS.chunks(self.job_id)))

    async def until_tokens(self, n: int) -> None:
        async def enough() -> bool:
            return await self.count() >= n

        await until(enough, JOB_SECONDS, f"{n} tokens of job {self.job_id}")

    async def until_running(self) -> str:
        """The running attempt's owner token."""

        async def owner() -> str | None:
            status, owner = await self.meta("status", "owner")
            return owner if status == "running" and owner else None

        return str(await until(owner, JOB_SECONDS, f"job {self.job_id} running"))

    def disrupt(self) -> float:
        self.disrupted_at = time.time()
        return self.disrupted_at

    async def sigterm(self, proc: Child) -> None:
        """SIGTERM ``proc`` now (the disruption) and time its exit."""
        bound = GRACE_SECONDS + EXIT_SLACK_SECONDS
        size = proc.log.stat().st_size
        sent = time.monotonic()
        self.disrupt()
        proc.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.process.wait(), bound + 10)
        except TimeoutError:
            await proc.kill()
        seconds = time.monotonic() - sent
        with proc.log.open("rb") as f:
            f.seek(size)
            handed_over = b"handed over" in f.read()
        self.exit = Exit(round(seconds, 3), proc.process.returncode, bound, handed_over)

    async def finish(self) -> dict[str, Any]:
        """Wait for the job's end and its followers'; audit everything against the store."""

        async def ended() -> str | None:
            (status,) = await self.meta("status")
            return status if status in ("done", "failed", "cancelled") else None

        await until(ended, JOB_SECONDS, f"job {self.job_id} ending")
        _, pending = await asyncio.wait(self.tasks.values(), timeout=FOLLOWER_SECONDS)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        if self.lab.reference is None:
            self.lab.reference = await reference_tokens(self.lab, self.client)
        db = self.lab.db
        stored = [str(x) for x in await db.lrange(KEYS.chunks(self.job_id), 0, -1)]
        times = [float(t) for t in await db.lrange(KEYS.times(self.job_id), 0, -1)]
        status, attempts, sha, finished, error = await self.meta(
            "status", "attempts", "sha256", "finished_at", "error"
        )
        digest = text_digest(stored)
        followers = {m: audit(f, stored, digest) for m, f in self.followers.items()}
        t_d = self.disrupted_at
        assert t_d is not None
        after = [t for t in times if t > t_d]
        next_token = after[0] - t_d if after else None
        # The attempt that continues the job: its first token is at its "running" notice's offset.
        resumed = [
            n["offset"]
            for f in self.followers.values()
            for n in f.notices
            if n["status"] == "running" and int(n["attempt"]) > 1 and n["t"] >= t_d
        ]
        resume = next_token
        if resumed and min(resumed) < len(times):
            resume = times[min(resumed)] - t_d
        heard = {m: f.heard_change(t_d) for m, f in self.followers.items()}
        # Live followers told of a new attempt without the "queued" notice before it.
        collapsed = [
            m
            for m in ("sse", "websocket")
            if any(n["status"] == "running" for n in self.followers[m].notices)
            and not any(n["status"] == "queued" for n in self.followers[m].notices)
        ]
        causes = json.loads((await self.meta("causes"))[0] or "[]")
        result: dict[str, Any] = {
            "scenario": self.scenario,
            "run": self.run,
            "job": self.job_id,
            "status": status,
            "error": error or None,
            "attempts": int(attempts or 0),
            "tokens_before": sum(1 for t in times if t <= t_d),
            "tokens_after": len(stored),
            "sha256_stored_ok": sha == digest,
            "uninterrupted": stored == self.lab.reference,
            "next_token_s": _round(next_token),
            "resume_s": _round(resume),
            "end_s": _round(float(finished) - t_d if finished else None),
            "change_heard_s": {m: _round(h - t_d if h else None) for m, h in heard.items()},
            "queued_notice_missed": collapsed,
            "causes": causes,
            "continued_from": min(resumed) if resumed else None,
            "followers": followers,
            "exit": asdict(self.exit) if self.exit else None,
            **self.extra,
        }
        result["defects"] = self.defects + defects_of(result)
        result["log_lines"] = self.lab.log_lines_since(self.log_marks)
        return result


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def defects_of(r: dict[str, Any]) -> list[str]:
    """What no disruption may cause."""
    found = []
    if r["status"] != "done":
        found.append(f"job ended {r['status']}: {r['error']}")
    if not r["sha256_stored_ok"]:
        found.append("stored sha256 is not the stored text's")
    for mode, a in r["followers"].items():
        if a["error"]:
            found.append(f"{mode}: {a['error']}")
        if a["gaps"] or a["dupes"] or a["wrong"]:
            found.append(f"{mode}: gaps {a['gaps']}, dupes {a['dupes']}, wrong {a['wrong']}")
        if not a["sha256_ok"]:
            found.append(f"{mode}: {a['ends']} end(s), sha256 ok: {a['sha256_ok']}")
    e = r["exit"]
    # uvicorn (serve) re-raises the SIGTERM it handled once it has shut down: -15 is a clean exit.
    if e and (e["seconds"] > e["bound"] or e["code"] not in (0, -signal.SIGTERM)):
        found.append(
            f"exit {e['seconds']:.2f} s after SIGTERM (bound {e['bound']:g}), code {e['code']}"
        )
    if e and r["attempts"] > 1 and not any("shut down" in x for x in r["causes"]):
        found.append(f"SIGTERMed, but the job was not handed over: {r['causes']}")
    return found


async def post_job(c: httpx.AsyncClient, body: dict[str, Any]) -> str:
    """``POST /jobs``, retried while refused (no worker yet, or Redis away)."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        with contextlib.suppress(httpx.TransportError):
            r = await c.post("/jobs", json=body)
            if r.status_code == 202:
                return str(r.json()["id"])
            if r.status_code != 503:
                raise Failure(f"POST /jobs: {r.status_code} {r.text[:300]}")
        if time.monotonic() > deadline:
            raise Failure(f"POST /jobs refused for {STARTUP_SECONDS:g} s")
        await asyncio.sleep(0.05)


async def job_end(lab: Lab, job_id: str, within: float) -> tuple[str, int, float]:
    """Wait for ``job_id``'s end: its status, attempts and end time (epoch)."""

    async def ended() -> list[Any] | None:
        fields: list[Any] = await lab.db.hmget(
            KEYS.meta(job_id), ["status", "attempts", "finished_at"]
        )
        return fields if fields[0] in ("done", "failed", "cancelled") else None

    status, attempts, finished = await until(ended, within, f"job {job_id} ending")
    return str(status), int(attempts or 0), float(finished or 0)


async def reference_tokens(lab: Lab, c: httpx.AsyncClient) -> list[str]:
    """The review written without interruption (same request; ``sim-fast`` changes only pace)."""
    job_id = await post_job(c, {**REVIEW, "model": "sim-fast"})
    status, _, _ = await job_end(lab, job_id, JOB_SECONDS)
    if status != "done":
        raise Failure(f"the reference job ended {status}")
    return [str(x) for x in await lab.db.lrange(KEYS.chunks(job_id), 0, -1)]


# -- scenarios ------------------------------------------------------------------------------


async def kill_mid(lab: Lab, t: Trial) -> None:
    """Worker SIGKILLed mid-review while a second worker is alive."""
    workers = await asyncio.gather(lab.start_worker(), lab.start_worker())
    await t.create()
    owner = lab.owner_of(await t.until_running(), workers)
    await t.until_tokens(DISRUPT_AT)
    t.disrupt()
    await owner.kill()


async def kill_before_first(lab: Lab, t: Trial) -> None:
    """Worker SIGKILLed after its claim, before its first token."""
    slow = await lab.start_worker(sim_first_token_ms="600000")
    await t.create()
    lab.owner_of(await t.until_running(), [slow])
    await lab.start_worker()
    t.disrupt()
    await slow.kill()


async def term_mid(lab: Lab, t: Trial) -> None:
    """Worker SIGTERMed mid-review (--graceful-timeout 1) while a second worker is alive."""
    grace = ("--graceful-timeout", f"{GRACE_SECONDS:g}")
    workers = await asyncio.gather(lab.start_worker(*grace), lab.start_worker(*grace))
    await t.create()
    owner = lab.owner_of(await t.until_running(), workers)
    await t.until_tokens(DISRUPT_AT)
    await t.sigterm(owner)


async def redis_restart(lab: Lab, t: Trial) -> None:
    """redis-server stopped for OUTAGE_SECONDS mid-review, restarted on the same port and dir;
    then a job created right after the restart."""
    await lab.start_worker()
    await t.create()
    await t.until_tokens(DISRUPT_AT)
    await lab.stop_redis()
    stopped = t.disrupt()  # the outage begins when redis-server has exited
    await asyncio.sleep(max(0.0, stopped + OUTAGE_SECONDS - time.time()))
    await lab.start_redis()
    restarted = time.time()
    job_id = await post_job(t.client, REVIEW)
    accepted = time.time()
    status, attempts, finished = await job_end(lab, job_id, JOB_SECONDS)
    t.extra["outage_s"] = round(restarted - stopped, 3)
    t.extra["after_restart"] = {
        "job": job_id,
        "status": status,
        "attempts": attempts,
        "accepted_after_s": round(accepted - restarted, 3),
        "end_after_s": round(finished - accepted, 3),
    }
    if status != "done":
        t.defects.append(f"the job created after the restart ended {status}")
    times = [float(x) for x in await lab.db.lrange(KEYS.times(t.job_id), 0, -1)]
    later = [x for x in times if x > restarted]
    t.extra["next_token_after_restart_s"] = _round(later[0] - restarted if later else None)


async def kill_no_worker(lab: Lab, t: Trial) -> None:
    """Only the API alive: the worker SIGKILLed; how long until each follower hears ``queued``.
    Then a worker is started and the job finishes (followers audited as everywhere)."""
    worker = await lab.start_worker()
    await t.create()
    await t.until_tokens(DISRUPT_AT)
    killed = t.disrupt()
    await worker.kill()
    bound = LEASE_SECONDS + 2 * REAP_INTERVAL_SECONDS + LONG_POLL_TIMEOUT + 2

    async def all_heard() -> bool:
        return all(f.first_seen("queued", killed) for f in t.followers.values())

    with contextlib.suppress(Failure):
        await until(all_heard, bound, "every follower hearing 'queued'")
    heard = {m: f.first_seen("queued", killed) for m, f in t.followers.items()}
    t.extra["queued_heard_s"] = {m: _round(h - killed if h else None) for m, h in heard.items()}
    for mode, h in heard.items():
        if h is None:
            t.defects.append(f"{mode} did not hear 'queued' within {bound:g} s")
    started = time.time()
    await lab.start_worker()
    t.extra["worker_started_after_s"] = round(started - killed, 3)


async def term_serve(lab: Lab, t: Trial) -> None:
    """``serve`` (the API and its workers, placed where ``serve`` places them) SIGTERMed
    mid-review (--graceful-timeout 1) while a standalone worker is alive; the followers are on
    the API-only process.

    The standalone worker starts once ``serve``'s worker has claimed the job (else either might
    claim it); ``serve``'s first token waits a few seconds meanwhile, so that the disruption
    still comes at ``DISRUPT_AT`` tokens.
    """
    grace = ("--graceful-timeout", f"{GRACE_SECONDS:g}")
    serve, _ = await lab.start_serve(*grace, sim_first_token_ms="4000")
    await t.create()
    lab.owner_of(await t.until_running(), [serve])
    await lab.start_worker()
    await t.until_tokens(DISRUPT_AT)
    await t.sigterm(serve)


SCENARIOS: dict[str, Callable[[Lab, Trial], Awaitable[None]]] = {
    "kill-mid": kill_mid,
    "kill-before-first": kill_before_first,
    "term-mid": term_mid,
    "redis-restart": redis_restart,
    "kill-no-worker": kill_no_worker,
    "term-serve": term_serve,
}
TITLES = {
    "kill-mid": "worker SIGKILL mid-review, 2nd worker alive",
    "kill-before-first": "worker SIGKILL after claim, before 1st token",
    "term-mid": "worker SIGTERM mid-review (grace 1 s), 2nd worker alive",
    "redis-restart": f"redis-server down {OUTAGE_SECONDS:g} s mid-review, restarted",
    "kill-no-worker": "worker SIGKILL, only the API alive (worker started later)",
    "term-serve": "`serve` (API + worker) SIGTERM (grace 1 s), standalone worker alive",
}


async def run_scenario(name: str, runs: int, root: Path) -> tuple[list[dict[str, Any]], Path]:
    logs = root / name
    logs.mkdir(parents=True)
    lab = Lab(logs)
    results: list[dict[str, Any]] = []
    try:
        await lab.start_redis()
        await lab.start_api()
        for run in range(1, runs + 1):
            started = time.monotonic()
            t = Trial(lab, name, run)
            try:
                await SCENARIOS[name](lab, t)
                result = await t.finish()
            except Failure as e:
                result = {"scenario": name, "run": run, "defects": [f"benchmark step: {e}"]}
                result["log_lines"] = lab.log_lines_since(t.log_marks)
            finally:
                await t.aclose()
                await lab.stop_workers()
            result["seconds"] = round(time.monotonic() - started, 1)
            results.append(result)
            say(
                f"{name} run {run}: {result.get('status')}, attempts {result.get('attempts')},"
                f" resume {result.get('resume_s')} s, end {result.get('end_s')} s,"
                f" defects {len(result['defects'])} ({result['seconds']:g} s)"
            )
            for d in result["defects"]:
                say(f"  DEFECT {d}")
    finally:
        await lab.aclose()
    return results, logs


# -- report ---------------------------------------------------------------------------------


def _span(values: Sequence[float | int | None], fmt: str = "{:g}") -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "—"
    lo, hi = min(got), max(got)
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}–{fmt.format(hi)}"


def _p50_max(values: Sequence[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "—"
    return f"{statistics.median(got):.2f} / {max(got):.2f}"


def _counts(values: Sequence[Any]) -> str:
    seen: dict[str, int] = {}
    for v in values:
        seen[str(v)] = seen.get(str(v), 0) + 1
    return ", ".join(f"{k} ×{n}" if len(seen) > 1 or n > 1 else k for k, n in seen.items())


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    head = (
        "| disruption | runs | status | attempts | tokens before → after | gaps / dupes |"
        " sha256 ok | same text | change heard s | resume s | end s | exit s |"
    )
    rows = [head, "|" + "---|" * 12]
    for name, runs in results.items():
        ok = [r for r in runs if "status" in r]
        follows = [a for r in ok for a in r["followers"].values()]
        gaps = sum(a["gaps"] + a["wrong"] for a in follows)
        dupes = sum(a["dupes"] for a in follows)
        sha = sum(a["sha256_ok"] for a in follows)
        heard = [r["change_heard_s"][m] for r in ok for m in MODES]
        exits = [r["exit"]["seconds"] for r in ok if r.get("exit")]
        bound = next((r["exit"]["bound"] for r in ok if r.get("exit")), None)
        exit_cell = f"{_p50_max(exits)} (≤ {bound:g})" if exits and bound else "—"
        resume = [r["resume_s"] for r in ok]
        ends = [r["end_s"] for r in ok]
        if name == "kill-no-worker":  # resumed only when the benchmark started a worker
            resume, ends = [], []
        failed = len(runs) - len(ok)
        rows.append(
            f"| {TITLES[name]} | {len(runs)}{f' ({failed} failed)' if failed else ''}"
            f" | {_counts([r['status'] for r in ok]) or '—'} | {_span([r['attempts'] for r in ok])}"
            f" | {_span([r['tokens_before'] for r in ok])}"
            f" → {_span([r['tokens_after'] for r in ok])}"
            f" | {gaps} / {dupes} | {sha}/{len(follows)}"
            f" | {sum(r['uninterrupted'] for r in ok)}/{len(ok)}"
            f" | {_p50_max(heard)} | {_p50_max(resume)} | {_p50_max(ends)} | {exit_cell} |"
        )
    return "\n".join(rows)


def notes(results: dict[str, list[dict[str, Any]]]) -> str:
    """What the table leaves out: reconnections, 503s ridden out, the causes followers heard."""
    lines = []
    for name, runs in results.items():
        ok = [r for r in runs if "status" in r]
        if not ok:
            continue

        def total(mode: str, key: str, ok: list[dict[str, Any]] = ok) -> int:
            return sum(_size(r["followers"][mode][key]) for r in ok)

        parts = [
            "reconnections: "
            + ", ".join(f"{m} {total(m, 'connections') - len(ok)}" for m in ("sse", "websocket")),
            "refused requests ridden out: "
            + ", ".join(f"{m} {total(m, 'refusals')}" for m in MODES),
        ]
        continued = [r["continued_from"] for r in ok if r["continued_from"] is not None]
        if continued:
            parts.append(f"the next attempt continued from offset {_span(continued)}")
        causes = sorted({x for r in ok for x in r["causes"]})
        if causes:
            parts.append("causes recorded: " + "; ".join(f"“{x}”" for x in causes))
        missed = sum(len(r["queued_notice_missed"]) for r in ok)
        if missed:
            parts.append(
                f"{missed} of {2 * len(ok)} SSE/WebSocket followers got the new attempt's"
                " `running` notice without the `queued` one"
            )
        if name == "kill-no-worker":
            heard = ", ".join(
                f"{m} {_p50_max([r['queued_heard_s'][m] for r in ok])}" for m in MODES
            )
            parts.append(f"`queued` heard after the kill (s, p50 / max): {heard}")
            parts.append(
                "worker started "
                + _p50_max([r["worker_started_after_s"] for r in ok])
                + " s after the kill"
            )
        if name == "redis-restart":
            after = [r["after_restart"] for r in ok]
            first = _p50_max([r["next_token_after_restart_s"] for r in ok])
            parts.append(f"outage {_p50_max([r['outage_s'] for r in ok])} s")
            parts.append(f"first token after the restart {first} s")
            parts.append(
                f"a job created after the restart: {_counts([a['status'] for a in after])},"
                f" attempts {_span([a['attempts'] for a in after])}, accepted"
                f" {_p50_max([a['accepted_after_s'] for a in after])} s after it, done"
                f" {_p50_max([a['end_after_s'] for a in after])} s after that"
            )
        lines.append(f"- {name}: " + "; ".join(parts))
    return "\n".join(lines)


def _size(value: Any) -> int:
    return len(value) if isinstance(value, list) else int(value)


async def main(args: argparse.Namespace) -> int:
    """Run the scenarios; print the table, the notes and every defect; write the JSON."""
    names = args.scenarios.split(",") if args.scenarios else list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        say(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
        return 2
    root = Path(tempfile.mkdtemp(prefix="rs-disruption-"))
    say(f"logs in {root}")
    started = time.monotonic()
    results: dict[str, list[dict[str, Any]]] = {}
    failed = False
    try:
        for name in names:
            results[name], _ = await run_scenario(name, args.runs, root)
            failed = failed or any(r["defects"] for r in results[name])
    except BaseException:  # interrupted, or the benchmark broke: keep the logs
        failed = True
        raise
    finally:
        if failed or args.keep_logs:
            say(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    took = time.monotonic() - started
    print(table(results))
    print()
    print(notes(results))
    print(f"\n{args.runs} run(s) per scenario, {took:.0f} s; pace {PACE:g} tok/s, first token"
          f" {FIRST_TOKEN_MS:g} ms, lease {LEASE_SECONDS:g} s, reap every"
          f" {REAP_INTERVAL_SECONDS:g} s, disruption at {DISRUPT_AT} tokens")  # fmt: skip
    for name, runs in results.items():
        for r in runs:
            for d in r["defects"]:
                print(f"DEFECT {name} run {r['run']}: {d}")
            if r["defects"]:
                for line in r.get("log_lines", [])[:20]:
                    print(f"    {line}")
    if args.output:
        payload = {
            "command": command(),
            "seconds": round(took, 1),
            "machine": machine(await redis_version()),
            "settings": {
                "pace": PACE,
                "first_token_ms": FIRST_TOKEN_MS,
                "lease_seconds": LEASE_SECONDS,
                "reap_interval_seconds": REAP_INTERVAL_SECONDS,
                "grace_seconds": GRACE_SECONDS,
                "outage_seconds": OUTAGE_SECONDS,
                "disrupt_at_tokens": DISRUPT_AT,
                "review": REVIEW,
            },
            "results": results,
        }
        with open(args.output, "w") as out:  # noqa: ASYNC230 - once, at the end
            json.dump(payload, out, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario")
    parser.add_argument("--scenarios", help=f"comma-separated, of: {', '.join(SCENARIOS)}")
    parser.add_argument("--output", help="also write every run's figures here (JSON)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs of a clean run")
    run(main(parser.parse_args()))
