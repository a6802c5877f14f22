"""Admission across real OS processes: two ``reviewstream serve --api-only`` processes and one
``reviewstream worker`` on the suite's Redis enforce one shared quota per key, accept one
another's stream tokens, and count open streams together — a SIGKILLed process's streams stop
counting within a bounded time.

test_admission.py runs two uvicorn servers inside the test's own process; here nothing is shared
but Redis: no token secret is configured, so the processes agree on one through Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import websockets

from reviewstream.admission import STREAM_ENTRY_SECONDS

from tests.support.procs import Process, environment, start, stop_all, wait_ready
from tests.support.servers import free_port

REVIEW = {"employee_name": "Edsger Dijkstra", "employee_review_points": "Shortest paths"}
LONG_REVIEW = {**REVIEW, "length_words": 1500}  # far longer than any test waits
KEYS = "alice:key-alice,bob:key-bob"
ALICE = {"Authorization": "Bearer key-alice"}
BOB = {"Authorization": "Bearer key-bob"}
SHARE_INTERVAL = 1.0  # StreamCounter's publishing interval (its default)


@dataclass
class Cluster:
    """Two API processes (``a``, ``b``) and a worker, all on one Redis."""

    a: str
    b: str
    processes: dict[str, Process] = field(default_factory=dict)

    def kill(self, name: str) -> None:
        self.processes[name].proc.kill()


@contextlib.asynccontextmanager
async def cluster(redis_url: str, logs: Path, **settings: str) -> AsyncIterator[Cluster]:
    """Both API processes and the worker, started together (each takes a second to import)."""
    # No REVIEWSTREAM_TOKEN_SECRET: the processes share one through Redis.
    env = environment(redis_url, {"api_keys": KEYS, **settings})
    ports = {"a": free_port(), "b": free_port()}
    api = ["serve", "--api-only", "--log-level", "warning", "--graceful-timeout", "1"]
    c = Cluster(a=f"http://127.0.0.1:{ports['a']}", b=f"http://127.0.0.1:{ports['b']}")
    commands = {
        "a": [*api, "--port", str(ports["a"])],
        "b": [*api, "--port", str(ports["b"])],
        "worker": ["worker"],
    }
    try:
        for name, args in commands.items():  # each registered at once, so none is left behind
            c.processes[name] = await start(name, args, env, logs)
        await asyncio.gather(wait_ready(c.a, c.processes["a"]), wait_ready(c.b, c.processes["b"]))
        yield c
    finally:
        await stop_all(list(c.processes.values()))


@contextlib.asynccontextmanager
async def clients(c: Cluster) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    async with (
        httpx.AsyncClient(base_url=c.a, timeout=10) as a,
        httpx.AsyncClient(base_url=c.b, timeout=10) as b,
    ):
        yield a, b


def link_with(link: str, **params: object) -> str:
    """A job link with more query parameters (httpx's ``params=`` would drop its token)."""
    return str(httpx.URL(link).copy_merge_params({k: str(v) for k, v in params.items()}))


async def eventually(probe: Callable[[], Awaitable[int]], expected: int, within: float) -> float:
    """Probe until it answers ``expected``; the seconds that took (fails after ``within``)."""
    t0 = time.monotonic()
    while True:
        got = await probe()
        elapsed = time.monotonic() - t0
        if got == expected:
            return elapsed
        assert elapsed < within, f"still {got} after {elapsed:.1f} s, expected {expected}"
        await asyncio.sleep(0.1)


async def test_jobs_per_minute_is_one_quota_across_processes(
    redis_url: str, tmp_path: Path
) -> None:
    per_minute = 3
    async with (
        cluster(redis_url, tmp_path, jobs_per_minute_per_key=str(per_minute)) as c,
        clients(c) as (a, b),
    ):
        answers = [await (a, b)[i % 2].post("/jobs", json=REVIEW, headers=ALICE) for i in range(8)]
        assert Counter(r.status_code for r in answers) == {202: per_minute, 429: 8 - per_minute}
        for r in answers[per_minute:]:
            assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
            assert "REVIEWSTREAM_JOBS_PER_MINUTE_PER_KEY" in r.json()["error"]
            assert r.json()["detail"] == {"limit": "REVIEWSTREAM_JOBS_PER_MINUTE_PER_KEY"}
        bob = [await (b, a)[i % 2].post("/jobs", json=REVIEW, headers=BOB) for i in range(3)]
        assert [r.status_code for r in bob] == [202, 202, 202]  # bob's own quota, untouched


async def test_active_jobs_is_one_quota_across_processes(redis_url: str, tmp_path: Path) -> None:
    async with (
        cluster(redis_url, tmp_path, max_active_jobs_per_key="2", sim_tokens_per_second="5") as c,
        clients(c) as (a, b),
    ):
        first = await a.post("/jobs", json=LONG_REVIEW, headers=ALICE)
        assert first.status_code == 202
        assert (await b.post("/jobs", json=LONG_REVIEW, headers=ALICE)).status_code == 202
        for client in (a, b):
            r = await client.post("/jobs", json=LONG_REVIEW, headers=ALICE)
            assert r.status_code == 429 and r.headers["Retry-After"]
            assert r.json()["detail"] == {"limit": "REVIEWSTREAM_MAX_ACTIVE_JOBS_PER_KEY"}
            assert "REVIEWSTREAM_MAX_ACTIVE_JOBS_PER_KEY" in r.json()["error"]
        assert (await b.post("/jobs", json=LONG_REVIEW, headers=BOB)).status_code == 202
        # A job created on a and cancelled on b frees its slot for both.
        assert (await b.delete(f"/jobs/{first.json()['id']}", headers=ALICE)).status_code == 204
        assert (await a.post("/jobs", json=LONG_REVIEW, headers=ALICE)).status_code == 202


async def first_sse_event(client: httpx.AsyncClient, link: str) -> tuple[int, str]:
    """The status and the first token event's name of an SSE stream (or '' if refused)."""
    async with client.stream("GET", link) as r:
        if r.status_code != 200:
            return r.status_code, ""
        async for line in r.aiter_lines():
            if line.startswith("event:"):
                return r.status_code, line.partition(":")[2].strip()
    return r.status_code, ""


async def test_stream_tokens_signed_by_one_process_work_on_the_other(
    redis_url: str, tmp_path: Path
) -> None:
    async with (
        cluster(redis_url, tmp_path, sim_tokens_per_second="20") as c,
        clients(c) as (a, b),
    ):
        made_on_a = (await a.post("/jobs", json=LONG_REVIEW, headers=ALICE)).json()
        made_on_b = (await b.post("/jobs", json=LONG_REVIEW, headers=ALICE)).json()
        for job, other in ((made_on_a, b), (made_on_b, a)):
            links = job["links"]
            assert "token=" in links["poll"]
            r = await other.get(links["poll"])
            assert r.status_code == 200 and r.json()["id"] == job["id"]
            r = await other.get(link_with(links["long_poll"], timeout=5))
            assert r.status_code == 200 and r.json()["tokens"], r.text
            assert await first_sse_event(other, links["sse"]) == (200, "token")
            ws = other.base_url.copy_with(scheme="ws").join(links["ws"])
            async with websockets.connect(str(ws)) as sock:
                message = json.loads(await asyncio.wait_for(sock.recv(), 10))
                assert message["type"] == "tokens"
        # Cancel on b with the token a signed (the link's path, without the offset).
        cancel = httpx.URL(made_on_a["links"]["poll"]).copy_remove_param("offset")
        assert (await b.delete(str(cancel))).status_code == 204
        page = (await a.get(made_on_a["links"]["poll"])).json()
        assert page["status"] == "cancelled"
        # The tokens open that one job only: on either process, b's job with a's token is 404.
        token = httpx.URL(made_on_a["links"]["poll"]).params["token"]
        r = await a.get(f"/jobs/{made_on_b['id']}", params={"token": token})
        assert r.status_code == 404


async def test_open_streams_are_counted_across_processes_and_a_killed_ones_lapse(
    redis_url: str, tmp_path: Path
) -> None:
    limit = 2
    async with (
        cluster(
            redis_url, tmp_path, max_streams_per_key=str(limit), sim_tokens_per_second="2"
        ) as c,
        clients(c) as (a, b),
        contextlib.AsyncExitStack() as held,
    ):
        job = (await a.post("/jobs", json=LONG_REVIEW, headers=ALICE)).json()
        bobs = (await b.post("/jobs", json=LONG_REVIEW, headers=BOB)).json()
        sse, long_poll = job["links"]["sse"], job["links"]["long_poll"]
        # Counts are shared about once a second: a change shows everywhere within two rounds.
        share = 3 * SHARE_INTERVAL + 1

        async def open_stream(client: httpx.AsyncClient) -> contextlib.AsyncExitStack:
            """An SSE stream, held open; retried while closed streams may still count."""
            t0 = time.monotonic()
            while True:
                stream = contextlib.AsyncExitStack()
                r = await stream.enter_async_context(client.stream("GET", sse))
                if r.status_code == 200:  # the follower, and so the count, is held from here
                    held.push_async_callback(stream.aclose)
                    return stream
                await stream.aclose()
                assert r.status_code == 429 and time.monotonic() - t0 < share, r.status_code
                await asyncio.sleep(0.1)

        def probe(client: httpx.AsyncClient, link: str = long_poll) -> Callable[[], Awaitable[int]]:
            async def status() -> int:
                r = await client.get(link_with(link, timeout=0.05))
                if r.status_code == 429:
                    assert r.json()["detail"] == {"limit": "REVIEWSTREAM_MAX_STREAMS_PER_KEY"}
                    assert r.headers["Retry-After"]
                return r.status_code

            return status

        # One stream on each process: together at the limit, so each refuses the next one
        # once the counts were shared (about once a second).
        on_a = await open_stream(a)
        await open_stream(b)
        for client in (a, b):
            await eventually(probe(client), 429, share)
        assert await probe(b, bobs["links"]["long_poll"])() == 200  # another key is not limited

        # Closing a's stream frees room on b.
        await on_a.aclose()
        await eventually(probe(b), 200, share)
        await held.aclose()

        # Fill the limit on a alone; b (holding none of alice's streams) refuses too.
        for _ in range(limit):
            await open_stream(a)
        await eventually(probe(b), 429, share)

        # a dies without a word: its published count lapses, and b admits alice again.
        c.kill("a")
        lapse = STREAM_ENTRY_SECONDS + 2 * SHARE_INTERVAL + 1
        seconds = await eventually(probe(b), 200, lapse)
        print(f"a SIGKILLed process's streams stopped counting after {seconds:.1f} s")
        with contextlib.suppress(httpx.HTTPError):
            await held.aclose()  # the streams from a broke with it
