"""The offset contract in every mode, on real uvicorn servers: resume from anywhere, random
disconnects, fan-out from one subscription, moving between API processes, a hub whose Redis
connection is killed, shutdown drain, a connect burst and a lost notification."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import websockets

from reviewstream.settings import Settings
from reviewstream.web import create_app
from reviewstream.wire import MODES, CloseCode

from tests.support import followers as fl
from tests.support.live import REVIEW, new_job, stored, tuned, until_tokens
from tests.support.servers import serve

# -- resume: table-driven, every mode ---------------------------------------------------------

CASES = ["start", "middle", "end", "past_end_of_finished", "after_end_resumed"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES)
async def test_resume_cases_on_finished_job(
    server: tuple[str, httpx.AsyncClient], mode: str, case: str
) -> None:
    base, c = server
    job_id = await new_job(c)
    full = await stored(c, job_id)
    n = len(full)
    offset = {
        "start": 0,
        "middle": n // 2,
        "end": n,
        "past_end_of_finished": n + 25,
        "after_end_resumed": n - 1,
    }[case]
    result = await fl.follow(mode, c, base, job_id, offset)
    assert result.tokens == full[offset:]
    assert len(result.ends) == 1
    end = result.ends[0]
    assert end["status"] == "done"
    assert end["next_offset"] == max(n, offset) if mode.endswith("poll") else n


@pytest.mark.parametrize("mode", MODES)
async def test_offset_past_the_end_waits_for_the_tokens(settings: Settings, mode: str) -> None:
    slow = tuned(settings, sim_tokens_per_second=150)
    async with serve(create_app(slow)) as base, httpx.AsyncClient(base_url=base) as c:
        job_id = await new_job(c)
        await until_tokens(c, job_id, 3)
        ahead = 40
        started = time.monotonic()
        result = await fl.follow(mode, c, base, job_id, ahead)
        waited = time.monotonic() - started
        full = await stored(c, job_id)
        assert result.tokens == full[ahead:] and len(result.ends) == 1
        assert waited > 0.1  # it had to wait for tokens that did not exist yet


@pytest.mark.parametrize("mode", MODES)
async def test_expired_job_is_a_clear_404(settings: Settings, mode: str) -> None:
    short = tuned(settings, retention_seconds=1)
    async with serve(create_app(short)) as base, httpx.AsyncClient(base_url=base) as c:
        job_id = await new_job(c, length_words=50)
        await stored(c, job_id)
        await asyncio.sleep(1.3)
        if mode == "websocket":
            url = base.replace("http", "ws") + f"/jobs/{job_id}/ws"
            async with websockets.connect(url) as ws:
                with pytest.raises(websockets.ConnectionClosedError) as info:
                    await ws.recv()
            closed = info.value.rcvd
            assert closed is not None
            assert closed.code == CloseCode.NOT_FOUND and "not found" in closed.reason
            return
        path = {
            "short_poll": f"/jobs/{job_id}",
            "long_poll": f"/jobs/{job_id}/long-poll",
            "sse": f"/jobs/{job_id}/events",
        }[mode]
        r = await c.get(path)
        assert r.status_code == 404
        assert "expired" in r.json()["error"]


# -- randomized disconnects -------------------------------------------------------------------


async def test_random_disconnects_and_resumes_lose_and_duplicate_nothing(
    settings: Settings,
) -> None:
    rng = random.Random(20261123)
    tuned_settings = tuned(settings, sim_tokens_per_second=300)
    async with serve(create_app(tuned_settings)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            jobs = [await new_job(c, length_words=150) for _ in range(4)]
            runs = [(mode, job) for job in jobs for mode in MODES for _ in range(2)]
            outcomes = await asyncio.gather(*(fl.resuming(m, c, base, j, rng) for m, j in runs))
            texts = {job: await stored(c, job) for job in jobs}
    assert sum(n for _, n in outcomes) >= 200, outcomes
    for (mode, job), (result, _) in zip(runs, outcomes, strict=True):
        assert result.tokens == texts[job], f"{mode} on {job}"
        assert len(result.ends) == 1


# -- fan-out ----------------------------------------------------------------------------------


def command_total(stats: dict[str, Any]) -> int:
    return sum(int(v["calls"]) for v in stats.values())


async def pubsub_connections(redis: aioredis.Redis) -> int:
    clients = await redis.client_list()
    return sum(1 for cl in clients if int(cl.get("sub", 0)) + int(cl.get("psub", 0)) > 0)


async def test_fanout_one_subscription_and_commands_flat_in_followers(
    settings: Settings, redis: aioredis.Redis
) -> None:
    paced = tuned(settings, sim_tokens_per_second=150, sim_first_token_ms=600)
    async with serve(create_app(paced)) as base:
        limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as c:

            async def run(n: int) -> tuple[int, int, int]:
                """Commands spent on one job followed by ``n`` followers, and pub/sub conns."""
                before = command_total(await redis.info("commandstats"))
                job_id = await new_job(c)
                modes = fl.LIVE_MODES
                tasks = [
                    asyncio.create_task(fl.follow(modes[i % len(modes)], c, base, job_id))
                    for i in range(n)
                ]
                await asyncio.sleep(0.4)  # all joined, before the first token
                conns = await pubsub_connections(redis)
                results = await asyncio.gather(*tasks)
                full = await stored(c, job_id)
                assert all(r.tokens == full and len(r.ends) == 1 for r in results)
                spent = command_total(await redis.info("commandstats")) - before
                return spent, conns, len(full)

            few, conns_few, tokens = await run(3)
            many, conns_many, _ = await run(150)
    assert conns_few == 1 and conns_many == 1
    extra_per_follower = (many - few) / 147
    # A follower costs a constant few commands to join (one read of the list, one more at the
    # end for a long poller), never a command per token: that would be >= tokens each.
    assert extra_per_follower <= 20, (few, many, tokens)
    assert tokens >= 100


# -- several API processes, and a hub that loses its connection -------------------------------


async def test_follower_moves_between_api_processes_mid_stream(settings: Settings) -> None:
    paced = tuned(settings, sim_tokens_per_second=150)
    api_only = create_app(paced, run_worker=False)
    async with serve(create_app(paced)) as base_a, serve(api_only) as base_b:
        async with (
            httpx.AsyncClient(base_url=base_a) as a,
            httpx.AsyncClient(base_url=base_b) as b,
        ):
            job_id = await new_job(a)
            part = await fl.sse(a, job_id, stop_after=15)
            assert not part.ends
            rest = await fl.sse(b, job_id, last_event_id=part.last_id)
            ws_part = await fl.websocket(base_b, job_id, 0, stop_after=5)
            ws_rest = await fl.websocket(base_a, job_id, ws_part.offset)
            full = await stored(b, job_id)
    assert part.tokens + rest.tokens == full and len(rest.ends) == 1
    assert ws_part.tokens + ws_rest.tokens == full


async def test_hub_connection_killed_mid_stream_followers_finish(
    settings: Settings, redis: aioredis.Redis
) -> None:
    paced = tuned(settings, sim_tokens_per_second=100)
    async with serve(create_app(paced)) as base, httpx.AsyncClient(base_url=base) as c:
        job_id = await new_job(c)
        tasks = [asyncio.create_task(fl.follow(mode, c, base, job_id)) for mode in fl.LIVE_MODES]
        await until_tokens(c, job_id, 15)
        killed = 0
        for client in await redis.client_list():
            if int(client.get("sub", 0)) > 0:
                await redis.client_kill_filter(_id=client["id"])
                killed += 1
        assert killed == 1
        results = await asyncio.wait_for(asyncio.gather(*tasks), 20)
        full = await stored(c, job_id)
        assert (await c.get(f"/jobs/{job_id}")).json()["status"] == "done"
        await asyncio.sleep(0.3)
        assert await pubsub_connections(redis) == 1  # the hub came back
    for result in results:
        assert result.tokens == full and len(result.ends) == 1


# -- shutdown, connect bursts, a lost notification --------------------------------------------


async def test_server_shutdown_ends_live_streams_so_clients_resume_elsewhere(
    settings: Settings, tmp_path: Any
) -> None:
    """SIGTERM: SSE ends at once, WebSocket closes 1012, a held long poll answers; the process
    exits without waiting for its graceful timeout, and each client resumes on another server."""
    import os
    import signal
    import subprocess
    import sys

    from tests.support.servers import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVIEWSTREAM_")}
    env |= {"REVIEWSTREAM_REDIS_URL": str(settings.redis_url),
            "REVIEWSTREAM_SIM_TOKENS_PER_SECOND": "40"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "reviewstream", "serve", "--port", str(port), "--api-only",
         "--graceful-timeout", "30"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    doomed = f"http://127.0.0.1:{port}"

    async def socket_until_closed(job_id: str, result: fl.Result) -> int | None:
        url = f"ws://127.0.0.1:{port}/jobs/{job_id}/ws"
        async with websockets.connect(url) as ws:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for raw in ws:
                    result.tokens += json.loads(raw).get("tokens", [])
            return ws.close_code

    try:
        async with serve(create_app(tuned(settings, sim_tokens_per_second=40))) as base:
            async with (
                httpx.AsyncClient(base_url=base) as c,
                httpx.AsyncClient(base_url=doomed, timeout=60) as d,
            ):
                for _ in range(300):
                    try:
                        if (await d.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        await asyncio.sleep(0.05)
                job_id = await new_job(c)
                part, ws_part = fl.Result(), fl.Result()
                sse = asyncio.create_task(fl.sse(d, job_id, result=part))
                ws = asyncio.create_task(socket_until_closed(job_id, ws_part))
                held = asyncio.create_task(
                    d.get(f"/jobs/{job_id}/long-poll", params={"offset": 10**6, "timeout": 60})
                )
                while len(part.tokens) < 5 or len(ws_part.tokens) < 5:
                    await asyncio.sleep(0.02)
                proc.send_signal(signal.SIGTERM)
                started = time.monotonic()
                await asyncio.wait_for(sse, 5)
                assert await asyncio.wait_for(ws, 5) == CloseCode.SERVICE_RESTART
                page = (await asyncio.wait_for(held, 5)).json()
                assert time.monotonic() - started < 2
                assert not part.ends and not page["done"] and page["tokens"] == []
                await asyncio.to_thread(proc.wait, 10)
                rest = await fl.sse(c, job_id, last_event_id=part.last_id)
                ws_rest = await fl.websocket(base, job_id, offset=len(ws_part.tokens))
                full = await stored(c, job_id)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert part.tokens + rest.tokens == full and len(rest.ends) == 1
    assert ws_part.tokens + ws_rest.tokens == full and len(ws_rest.ends) == 1


async def test_connect_burst_waits_for_pool_instead_of_failing(settings: Settings) -> None:
    """400 streams opened at once through an 8-connection Redis pool: all served, none 5xx."""
    small_pool = tuned(settings, redis_max_connections=8)
    async with serve(create_app(small_pool)) as base:
        limits = httpx.Limits(max_connections=500, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as c:
            job_id = await new_job(c, length_words=50)
            full = await stored(c, job_id)
            results = await asyncio.gather(
                *(fl.follow(("sse", "long_poll")[i % 2], c, base, job_id) for i in range(400))
            )
    assert all(r.tokens == full and len(r.ends) == 1 for r in results)


async def test_a_lost_notification_is_recovered_by_resync(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """A token that reached the list without its notification still reaches the follower."""
    from reviewstream.keys import Keys
    from reviewstream.models import ReviewRequest
    from reviewstream.store import Store

    quick = tuned(settings, resync_seconds=0.5)
    store = Store(redis, Keys(), retention_seconds=60)
    await store.queue.ensure_group()
    job_id = await store.create(
        ReviewRequest.model_validate(REVIEW), provider="simulated", model="sim-default"
    )
    [entry] = await store.queue.next_entries("w", 1, 100)
    claim = await store.claim(entry, "w", 60_000)
    assert claim is not None
    async with serve(create_app(quick, run_worker=False)) as base:
        async with httpx.AsyncClient(base_url=base) as c:
            follower = asyncio.create_task(fl.sse(c, job_id, stop_after=2))
            await asyncio.sleep(0.3)
            assert await store.jobs.append(job_id, claim.owner, ["one"])
            # Written behind the hub's back: no notification is published for it.
            await redis.rpush(Keys().chunks(job_id), " two")
            await redis.rpush(Keys().times(job_id), "1.0")
            result = await asyncio.wait_for(follower, 5)
    assert result.tokens == ["one", " two"]
