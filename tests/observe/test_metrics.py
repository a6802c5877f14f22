"""``/metrics`` after real traffic: each series moves by what the traffic did, with the right
labels (each assertion fails when its series stops moving)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import websockets
from pydantic import SecretStr
from redis.exceptions import ConnectionError as RedisConnectionError

from reviewstream.errors import StoreError
from reviewstream.observe.metrics import MODES, Tally
from reviewstream.settings import Settings
from reviewstream.store.boundary import redis_errors
from reviewstream.web import create_app
from reviewstream.wire import MODES as OUR_MODES

from tests.support import followers as fl
from tests.support import live
from tests.support.scrape import Samples, scrape, until, value
from tests.support.servers import free_port, serve

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "reviewstream.json"


def moved(before: Samples, name: str, by: float, **labels: str) -> Callable[[Samples], bool]:
    return lambda now: value(now, name, **labels) - value(before, name, **labels) == by


async def test_every_mode_moves_its_series(server: tuple[str, httpx.AsyncClient]) -> None:
    base, c = server
    before = await scrape(c)
    # Every dialect's series exist from the start (other dialects record into theirs).
    for mode in MODES:
        assert ("reviewstream_delivered_tokens_total", frozenset({("mode", mode)})) in before
    jobs = [await live.new_job(c) for _ in OUR_MODES]
    results = await asyncio.gather(
        *(fl.follow(mode, c, base, job) for mode, job in zip(OUR_MODES, jobs, strict=True))
    )
    checks = [
        moved(before, "reviewstream_jobs_created_total", len(jobs)),
        moved(before, "reviewstream_jobs_ended_total", len(jobs), status="done"),
        moved(before, "reviewstream_job_attempts_total", len(jobs)),
        moved(
            before,
            "reviewstream_provider_first_token_seconds_count",
            len(jobs),
            provider="simulated",
        ),
    ]
    for mode, result in zip(OUR_MODES, results, strict=True):
        assert len(result.ends) == 1
        checks.append(
            moved(before, "reviewstream_delivered_tokens_total", result.offset, mode=mode)
        )
        # Every connection closed (the server may notice a client leaving a moment later).
        checks.append(moved({}, "reviewstream_connections", 0, mode=mode))
    now = await until(c, lambda s: all(check(s) for check in checks))
    for mode in OUR_MODES:
        events = value(now, "reviewstream_delivered_events_total", mode=mode) - value(
            before, "reviewstream_delivered_events_total", mode=mode
        )
        lags = value(now, "reviewstream_delivery_lag_seconds_count", mode=mode) - value(
            before, "reviewstream_delivery_lag_seconds_count", mode=mode
        )
        assert 2 <= events and 1 <= lags <= events, (mode, events, lags)
        inf = value(now, "reviewstream_delivery_lag_seconds_bucket", mode=mode, le="+Inf")
        assert inf == value(now, "reviewstream_delivery_lag_seconds_count", mode=mode)
    for outcome in ("tokens", "end"):
        got = value(now, "reviewstream_long_poll_holds_total", outcome=outcome)
        assert got > value(before, "reviewstream_long_poll_holds_total", outcome=outcome)
    assert ("reviewstream_queue_depth", frozenset({("shard", "0")})) in now
    # The answering process's gauges, as before.
    assert ("reviewstream_followers", frozenset()) in now
    assert any(name == "reviewstream_process_info" for name, _ in now)


async def test_the_ui_stream_and_durable_streams_move_their_series(
    server: tuple[str, httpx.AsyncClient],
) -> None:
    _, c = server
    before = await scrape(c)
    ui_job, ds_job = await live.new_job(c), await live.new_job(c)
    async with c.stream("GET", f"/jobs/{ui_job}/stream") as r:  # live, to its end
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                break
    ui_tokens = len(await live.stored(c, ui_job))
    async with c.stream("GET", f"/v1/stream/jobs/{ds_job}?offset=-1&live=sse") as r:
        async for line in r.aiter_lines():
            if '"streamClosed":true' in line:
                break
    ds_tokens = len(await live.stored(c, ds_job))
    checks = [
        moved(before, "reviewstream_delivered_tokens_total", ui_tokens, mode="ui_stream"),
        moved(before, "reviewstream_delivered_tokens_total", ds_tokens, mode="durable_streams"),
        moved({}, "reviewstream_connections", 0, mode="ui_stream"),
        moved({}, "reviewstream_connections", 0, mode="durable_streams"),
    ]
    now = await until(c, lambda s: all(check(s) for check in checks))
    for mode in ("ui_stream", "durable_streams"):
        lags = value(now, "reviewstream_delivery_lag_seconds_count", mode=mode) - value(
            before, "reviewstream_delivery_lag_seconds_count", mode=mode
        )
        assert lags >= 1, mode


async def test_open_streams_count_per_mode(settings: Settings) -> None:
    slow = live.tuned(settings, sim_tokens_per_second=5)
    async with serve(create_app(slow)) as base, httpx.AsyncClient(base_url=base, timeout=30) as c:
        job = await live.new_job(c)
        # Connections an earlier test's server was still closing have closed.
        streams = ("sse", "websocket", "long_poll")
        await until(c, lambda s: all(value(s, "reviewstream_connections", mode=m) == 0
                                     for m in streams))  # fmt: skip
        url = base.replace("http://", "ws://") + f"/jobs/{job}/ws"
        async with (
            c.stream("GET", f"/jobs/{job}/events") as sse,
            websockets.connect(url) as ws,
        ):
            assert sse.status_code == 200
            await ws.recv()
            poll = asyncio.create_task(c.get(f"/jobs/{job}/long-poll", params={"offset": 10**6}))
            await until(
                c, lambda s: all(value(s, "reviewstream_connections", mode=m) == 1 for m in streams)
            )
            await c.delete(f"/jobs/{job}")
            assert (await poll).status_code == 200
        await until(c, lambda s: value(s, "reviewstream_connections", mode="sse") == 0)


async def test_refusals_by_status_and_reason(server: tuple[str, httpx.AsyncClient]) -> None:
    base, c = server
    before = await scrape(c)
    assert (await c.get("/jobs/no-such-job")).status_code == 404
    assert (await c.get("/jobs/no-such-job", params={"offset": -1})).status_code == 422
    url = base.replace("http://", "ws://") + "/jobs/no-such-job/ws"
    async with websockets.connect(url) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404
    await until(
        c,
        lambda s: moved(before, "reviewstream_refusals_total", 2, status="404",
                        reason="JobNotFound")(s)
        and moved(before, "reviewstream_refusals_total", 1, status="422",
                  reason="InvalidInput")(s),
    )  # fmt: skip


async def test_keyed_refusals(settings: Settings) -> None:
    keyed = live.tuned(settings, api_keys=SecretStr("alice:key-alice"))
    async with serve(create_app(keyed)) as base, httpx.AsyncClient(base_url=base) as c:
        before = await scrape(c)
        assert (await c.get("/jobs/abc")).status_code == 401
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(base.replace("http://", "ws://") + "/jobs/abc/ws"):
                pass
        await until(c, moved(before, "reviewstream_refusals_total", 2, status="401",
                             reason="Unauthorized"))  # fmt: skip


async def test_provider_errors_by_provider_and_kind(settings: Settings) -> None:
    # An OpenAI-compatible server that is not there: one try, refused, the job fails.
    unreachable = live.tuned(
        settings, openai_base_url=f"http://127.0.0.1:{free_port()}/v1", upstream_max_retries=0
    )
    async with serve(create_app(unreachable)) as base, httpx.AsyncClient(base_url=base) as c:
        before = await scrape(c)
        job = await live.new_job(c, provider="openai", model="m")
        end = (await fl.long_poll(c, job)).ends[0]
        assert end["status"] == "failed"
        await until(
            c,
            lambda s: moved(before, "reviewstream_provider_errors_total", 1, provider="openai",
                            kind="UpstreamUnavailable")(s)
            and moved(before, "reviewstream_jobs_ended_total", 1, status="failed")(s),
        )  # fmt: skip


async def test_redis_errors_by_operation(server: tuple[str, httpx.AsyncClient]) -> None:
    _, c = server
    before = await scrape(c)
    with pytest.raises(StoreError), redis_errors("read job"):
        raise RedisConnectionError("gone")
    await until(c, moved(before, "reviewstream_redis_errors_total", 1, operation="read job"))


def test_lag_is_observed_per_batch_from_the_newest_token() -> None:
    tally = Tally()
    tally.delivered(["a", "b"], [time.time() - 60, time.time() - 0.001])
    assert tally.tokens == 2 and tally.events == 1
    assert tally.lag_counts[0] == 1 and tally.lag_sum < 1  # the newest token's lag


async def test_the_dashboard_graphs_series_the_service_exposes(
    server: tuple[str, httpx.AsyncClient],
) -> None:
    _, c = server
    exposed = {name for name, _ in await scrape(c)}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\breviewstream_\w+", expr)}
    assert used and used <= exposed, used - exposed
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for panel in ("delivery lag", "connections", "jobs by outcome", "queue depth", "provider"):
        assert panel in titles


async def test_queue_depth_per_shard_at_scrape_time(settings: Settings) -> None:
    # One slot, a first token an hour away: the first job runs, the others wait in the queue.
    busy = live.tuned(settings, worker_concurrency=1, sim_first_token_ms=3_600_000)
    async with serve(create_app(busy)) as base, httpx.AsyncClient(base_url=base) as c:
        jobs = [await live.new_job(c) for _ in range(3)]
        await until(c, lambda s: value(s, "reviewstream_queue_depth", shard="0") == 2)
        for job in jobs:
            await c.delete(f"/jobs/{job}")


@pytest.mark.parametrize("max_age", [0.0, 60.0])
async def test_a_scrape_within_the_max_age_gets_the_last_rendering(
    settings: Settings, max_age: float
) -> None:
    tuned = settings.model_copy(update={"metrics_max_age_seconds": max_age})
    async with serve(create_app(tuned)) as base, httpx.AsyncClient(base_url=base) as c:
        first = (await c.get("/metrics")).text
        await live.new_job(c)  # reviewstream_jobs_created_total moves
        again = (await c.get("/metrics")).text
    created = "reviewstream_jobs_created_total"
    assert (again == first) is (max_age > 0), (value_of(first, created), value_of(again, created))


def value_of(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(name + " "))
