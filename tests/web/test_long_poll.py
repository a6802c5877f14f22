"""Long poll on a real uvicorn: a timeout is a 200 with no tokens, held at most the server's cap;
pollers at one offset get the same bytes; callers, parameters and refusals as the one parser
reads them; the route described in the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from reviewstream.settings import Settings
from reviewstream.tenancy import StreamTokens
from reviewstream.web import create_app, server_options

from tests.support.live import REVIEW, new_job, tuned
from tests.support.servers import serve

SECRET = "long-poll-secret"
KEYS = "alice:key-alice,bob:key-bob"
ALICE = {"Authorization": "Bearer key-alice"}


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


async def test_callers_and_parameters_answer_as_the_contract_says(settings: Settings) -> None:
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
        cases: list[tuple[str, str, dict[str, str], int]] = [
            (path, "offset=0&limit=3&timeout=1", ALICE, 200),  # a page read from the list
            (path, "offset=2&limit=2&limit=5", ALICE, 200),  # the last of a repeated parameter
            (path, "offset=%32&limit=%32", ALICE, 200),  # escapes are decoded
            (path, "offset=999999", ALICE, 200),  # past the end of an ended job: the end
            (path, f"token={token}", {}, 200),  # a stream token in the link
            (path, "offset=0", {"Authorization": "bearer key-alice"}, 200),  # any case of Bearer
            (path, "offset=0", {"Authorization": "Bearer key-bob"}, 404),  # another key's job
            (path, "offset=0", {"Authorization": "Bearer nope"}, 401),
            (path, "offset=0", {"Authorization": "Basic a2V5LWFsaWNl"}, 401),  # no bearer
            (path, "offset=0", {}, 401),
            (path, "token=rst1.forged", {}, 401),
            (path, "offset=-1", {}, 401),  # the caller first, then the parameters
            ("/jobs/unknown-job/long-poll", "", ALICE, 404),
        ]
        for url, query, headers, status in cases:
            r = await c.get(f"{url}?{query}", headers=headers)
            assert r.status_code == status, (url, query, headers, r.text)
            if status == 200:
                assert r.headers["cache-control"] == "no-store"
                assert r.headers["x-content-type-options"] == "nosniff"
                assert r.headers["content-type"] == "application/json"
            else:
                assert set(r.json()) == {"error", "detail"}
        page = (await c.get(f"{path}?offset=2&limit=2&limit=5", headers=ALICE)).json()
        assert page["offset"] == 2 and len(page["tokens"]) == 5
        page = (await c.get(f"{path}?offset=%32&limit=%32", headers=ALICE)).json()
        assert page["offset"] == 2 and len(page["tokens"]) == 2
        assert (await c.get(f"{path}?offset=0", headers=ALICE)).json()["tokens"]
        other = await c.post(path, headers=ALICE)
        assert other.status_code == 405 and other.headers["allow"] == "GET"
        assert other.json()["error"] == f"Method Not Allowed: POST {path}"


REFUSED = [
    "offset=-1",
    "offset=1.5",
    "offset=9007199254740993",
    "offset=",
    "offset",
    "offset=+1",
    "offset=%D9%A1%D9%A2",  # Arabic-Indic digits: digits to str.isdigit, not to us
    "limit=0",
    "limit=10001",
    "timeout=0",
    "timeout=300.5",
    "timeout=nan",
    "timeout=inf",
    "timeout=soon",
]


async def test_malformed_parameters_are_422_naming_them(settings: Settings) -> None:
    async with (
        serve(create_app(tuned(settings, long_poll_max_timeout=0.2))) as base,
        httpx.AsyncClient(base_url=base) as c,
    ):
        job_id = await new_job(c)
        for query in REFUSED:
            r = await c.get(f"/jobs/{job_id}/long-poll?{query}")
            assert r.status_code == 422, (query, r.text)
            name = query.partition("=")[0]
            assert f"query.{name}:" in r.json()["error"], (query, r.text)
            assert r.json()["detail"][0]["loc"] == ["query", name]
        r = await c.get(f"/jobs/{job_id}/long-poll?timeout=1e-1")
        assert r.status_code == 200  # a number in any decimal notation
        bad_id = await c.get("/jobs/not%20an%20id/long-poll")
        assert bad_id.status_code == 422 and "job_id" in bad_id.json()["error"]


def test_the_openapi_document_still_declares_the_route_as_it_was(settings: Settings) -> None:
    doc = create_app(settings).openapi()
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
    """Shutdown answers held polls at once (the server stops waiting for them)."""
    s = tuned(settings, sim_first_token_ms=60_000)
    s = keyed(s) if mode == "keyed" else s
    headers = ALICE if mode == "keyed" else {}
    app = create_app(s)
    async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as c:
        job_id = (await c.post("/jobs", json=REVIEW, headers=headers)).json()["id"]
        path = f"/jobs/{job_id}/long-poll"
        polls = [
            asyncio.create_task(c.get(f"{path}?timeout=30&offset={offset}", headers=headers))
            for offset in (0, 5)
        ]
        await asyncio.sleep(0.3)
        app.state.drain()
        for answer in await asyncio.wait_for(asyncio.gather(*polls), 5):
            assert answer.status_code == 200 and answer.json()["tokens"] == []
