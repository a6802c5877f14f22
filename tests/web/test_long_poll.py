"""Long poll on a real uvicorn: a timeout is a 200 with no tokens, held at most the server's cap;
pollers at one offset get the same bytes; and the two ways in (``PlainLongPoll`` for plain
requests, the FastAPI route for the rest) answer alike, with the OpenAPI document unchanged.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from reviewstream.settings import Settings
from reviewstream.tenancy import StreamTokens
from reviewstream.web import create_app, server_options
from reviewstream.web.routes.long_poll import PlainLongPoll, plain

from conftest import serve
from live import REVIEW, new_job, tuned

SECRET = "long-poll-secret"
KEYS = "alice:key-alice,bob:key-bob"
ALICE = {"Authorization": "Bearer key-alice"}
FORCE_FASTAPI = "x=%20"  # an escape: the plain way leaves the request to the FastAPI route


async def test_long_poll_timeout_is_200_with_no_tokens_and_capped(settings: Settings) -> None:
    waiting = tuned(settings, sim_first_token_ms=5000, long_poll_max_timeout=0.5)
    async with serve(create_app(waiting)) as base, httpx.AsyncClient(base_url=base) as c:
        job_id = await new_job(c)
        started = time.monotonic()
        r = await c.get(f"/jobs/{job_id}/long-poll", params={"offset": 0, "timeout": 0.2})
        assert 0.15 < time.monotonic() - started < 2
        page = r.json()
        assert r.status_code == 200 and page["tokens"] == [] and not page["done"]
        assert page["next_offset"] == 0
        started = time.monotonic()
        await c.get(f"/jobs/{job_id}/long-poll", params={"timeout": 300})
        assert time.monotonic() - started < 2  # held at most the server's cap
        r = await c.get(f"/jobs/{job_id}/long-poll", params={"timeout": -1})
        assert r.status_code == 422 and "timeout" in r.json()["error"]


async def test_a_long_poll_of_an_ended_job_says_so_with_its_last_tokens(
    settings: Settings,
) -> None:
    """No feed has heard this job end (a fresh server): the list read brings tokens and end."""
    async with serve(create_app(settings)) as base, httpx.AsyncClient(base_url=base) as c:
        job_id = await new_job(c)
        while not (done := (await c.get(f"/jobs/{job_id}", params={"limit": 10000})).json())[
            "done"
        ]:
            await asyncio.sleep(0.02)
    async with serve(create_app(settings, run_worker=False)) as base:
        async with httpx.AsyncClient(base_url=base) as c:
            r = await c.get(f"/jobs/{job_id}/long-poll", params={"offset": 0, "timeout": 5})
    page = r.json()
    assert page["tokens"] == done["tokens"] and page["next_offset"] == done["next_offset"]
    assert (page["status"], page["done"], page["sha256"]) == ("done", True, done["sha256"])


async def test_pollers_at_one_offset_receive_the_same_bytes(settings: Settings) -> None:
    slow = tuned(settings, sim_tokens_per_second=2, sim_first_token_ms=10)
    limits = httpx.Limits(max_connections=20)
    async with (
        serve(create_app(slow)) as base,
        httpx.AsyncClient(base_url=base, limits=limits, timeout=10) as c,
    ):
        job_id = await new_job(c)
        path = f"/jobs/{job_id}/long-poll"
        first = (await c.get(path, params={"offset": 0})).json()  # the feed hears tokens now
        offset = first["next_offset"]
        answers = await asyncio.gather(*(c.get(path, params={"offset": offset}) for _ in range(12)))
        assert all(r.status_code == 200 for r in answers)
        assert len({r.content for r in answers}) == 1  # byte for byte, one answer for all
        page = answers[0].json()
        assert page["offset"] == offset and page["next_offset"] > offset


def keyed(settings: Settings) -> Settings:
    values = {
        **settings.model_dump(),
        "api_keys": KEYS,
        "token_secret": SECRET,
        "worker_grace_seconds": 0.2,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def comparable(r: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    """What a client gets: status, body and headers (but the date)."""
    headers = [(k, v) for k, v in r.headers.multi_items() if k != "date"]
    return r.status_code, r.content, headers


async def test_both_ways_in_answer_alike(settings: Settings) -> None:
    s = keyed(settings)
    async with (
        serve(create_app(s), **server_options(s)) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as c,
    ):
        job_id = (await c.post("/jobs", json=REVIEW, headers=ALICE)).json()["id"]
        token = StreamTokens(SECRET.encode(), 60).issue(job_id, "alice")
        end = {"offset": 10**6}
        while not (await c.get(f"/jobs/{job_id}", params=end, headers=ALICE)).json()["done"]:
            await asyncio.sleep(0.02)
        path = f"/jobs/{job_id}/long-poll"
        cases: list[tuple[str, str, dict[str, str]]] = [
            (path, "offset=0&limit=3&timeout=1", ALICE),  # a page read from the list
            (path, "offset=2&limit=2&limit=5", ALICE),  # the last of a repeated parameter
            (path, "offset=999999", ALICE),  # past the end of an ended job: the end
            (path, f"token={token}", {}),  # a stream token in the link
            (path, "offset=0", {"Authorization": "bearer key-alice"}),  # any case of Bearer
            (path, "offset=0", {"Authorization": "Bearer key-bob"}),  # another key's job: 404
            (path, "offset=0", {"Authorization": "Bearer nope"}),  # 401
            (path, "offset=0", {"Authorization": "Basic a2V5LWFsaWNl"}),  # no bearer: 401
            (path, "offset=0", {}),  # 401
            (path, "token=rst1.forged", {}),  # 401
            ("/jobs/unknown-job/long-poll", "", ALICE),  # 404
        ]
        statuses = []
        for url, query, headers in cases:
            direct = await c.get(f"{url}?{query}", headers=headers)
            framework = await c.get(f"{url}?{query}&{FORCE_FASTAPI}", headers=headers)
            assert comparable(direct) == comparable(framework), (url, query, headers)
            if direct.status_code == 200:
                assert direct.headers["cache-control"] == "no-store"
                assert direct.headers["x-content-type-options"] == "nosniff"
            statuses.append(direct.status_code)
        assert statuses == [200] * 5 + [404, 401, 401, 401, 401, 404]
        assert (await c.get(f"{path}?offset=0", headers=ALICE)).json()["tokens"]


# Queries the plain way must leave to the FastAPI route, and what the route answers them.
LEFT_TO_FASTAPI = [
    ("offset=-1", 422),
    ("offset=1.5", 422),
    ("offset=9007199254740993", 422),
    ("offset=", 422),
    ("offset", 422),
    ("limit=0", 422),
    ("limit=10001", 422),
    ("timeout=0", 422),
    ("timeout=300.5", 422),
    ("timeout=nan", 422),
    ("timeout=inf", 422),
    ("timeout=soon", 422),
    ("offset=%31", 200),  # an escape FastAPI decodes
    ("offset=+1", 200),  # a space FastAPI strips
    ("timeout=1e-1", 200),  # a float FastAPI reads
]


def scope(
    query: str,
    *,
    method: str = "GET",
    path: str = "/jobs/j0b-_1/long-poll",
    headers: list[tuple[bytes, bytes]] | None = None,
    root_path: str = "",
) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": root_path + path,
        "root_path": root_path,
        "query_string": query.encode(),
        "headers": headers or [],
    }


async def test_what_the_plain_way_leaves_to_fastapi_is_answered_by_it(settings: Settings) -> None:
    for query, _ in LEFT_TO_FASTAPI:
        assert plain(scope(query)) is None, query
    async with (
        serve(create_app(tuned(settings, long_poll_max_timeout=0.2))) as base,
        httpx.AsyncClient(base_url=base) as c,
    ):
        job_id = await new_job(c)
        for query, status in LEFT_TO_FASTAPI:
            r = await c.get(f"/jobs/{job_id}/long-poll?{query}")
            assert r.status_code == status, (query, r.text)
            if status == 422:
                assert set(r.json()) == {"error", "detail"}
        bad_id = await c.get("/jobs/not%20an%20id/long-poll")
        assert bad_id.status_code == 422 and plain(scope("", path="/jobs/a b/long-poll")) is None


def test_the_plain_way_reads_what_fastapi_reads() -> None:
    got = plain(scope("offset=12&limit=7&timeout=2.5&token=rst1.a.b.1.c_d-e&unknown=%zz"))
    assert got is None  # an escape anywhere: FastAPI's to read
    got = plain(scope("offset=12&offset=13&limit=7&timeout=2.5&token=rst1.a.b.1.c_d-e&x=1"))
    assert got is not None
    assert (got.job_id, got.offset, got.limit, got.hold, got.token, got.bearer) == (
        "j0b-_1", 13, 7, 2.5, "rst1.a.b.1.c_d-e", None
    )  # fmt: skip
    defaults = plain(scope(""))
    assert defaults is not None
    assert (defaults.offset, defaults.limit, defaults.hold) == (0, None, 20.0)
    assert plain(scope("offset=9007199254740992")) is not None  # the largest offset
    for header, bearer in [
        (b"Bearer  k1 ", "k1"),
        (b"bEaReR k2", "k2"),
        (b"Basic k3", None),
        (b"Bearer", None),
        (b"Bearer   ", None),
    ]:
        got = plain(scope("", headers=[(b"authorization", header)]))
        assert got is not None and got.bearer == bearer, header
    twice = [(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")]
    assert plain(scope("", headers=twice)) is None
    assert plain(scope("", method="HEAD")) is None
    assert plain(scope("", path="/jobs/x/long-poll/")) is None
    mounted = plain(scope("offset=3", root_path="/api"))
    assert mounted is not None and mounted.offset == 3


def test_the_openapi_document_still_declares_the_route_as_it_was(settings: Settings) -> None:
    app = create_app(settings)
    assert isinstance(app.router.routes[0], PlainLongPoll)
    doc = app.openapi()
    expected = json.loads((Path(__file__).parent / "long_poll_openapi.json").read_text())
    assert doc["paths"]["/jobs/{job_id}/long-poll"] == expected["operation"]
    assert doc["components"]["schemas"]["JobPage"] == expected["JobPage"]
    assert doc["components"]["schemas"]["ErrorBody"] == expected["ErrorBody"]
    ok = expected["operation"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"] == {"$ref": "#/components/schemas/JobPage"}


@pytest.mark.parametrize("mode", ["open", "keyed"])
async def test_a_held_poll_answers_a_draining_server_with_what_is_stored(
    settings: Settings, mode: str
) -> None:
    """Both ways: shutdown answers held polls at once (the server stops waiting for them)."""
    s = tuned(settings, sim_first_token_ms=60_000)
    s = keyed(s) if mode == "keyed" else s
    headers = ALICE if mode == "keyed" else {}
    app = create_app(s)
    async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as c:
        job_id = (await c.post("/jobs", json=REVIEW, headers=headers)).json()["id"]
        path = f"/jobs/{job_id}/long-poll"
        polls = [
            asyncio.create_task(c.get(f"{path}?timeout=30{extra}", headers=headers))
            for extra in ("", f"&{FORCE_FASTAPI}")
        ]
        await asyncio.sleep(0.3)
        app.state.drain()
        for answer in await asyncio.wait_for(asyncio.gather(*polls), 5):
            assert answer.status_code == 200 and answer.json()["tokens"] == []
