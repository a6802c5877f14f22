"""The auth matrix on a real uvicorn: every credential against every operation and mode.

Rows are credentials, columns operations; each cell is the documented status (HTTP) or, for the
WebSocket, 'ok', 'http NNN' (refused before the upgrade) or 'close NNNN'.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets

from reviewstream.settings import Settings
from reviewstream.tenancy import StreamTokens
from reviewstream.web import create_app, server_options

from tests.support.servers import serve

REVIEW = {"employee_name": "Grace Hopper", "employee_review_points": "Compilers; teaching"}
SECRET = "test-token-secret"
KEYS = "alice:key-alice,bob:key-bob"


def keyed(settings: Settings, **changes: Any) -> Settings:
    """``settings`` with API keys (validated again, so the secrets become ``SecretStr``)."""
    values = {
        **settings.model_dump(),
        "api_keys": KEYS,
        "token_secret": SECRET,
        "sim_tokens_per_second": 20.0,  # the job is still running while the matrix runs
        "worker_grace_seconds": 0.2,
        **changes,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
async def base(settings: Settings) -> AsyncIterator[str]:
    s = keyed(settings)
    async with serve(create_app(s), **server_options(s)) as url:
        yield url


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def ws_outcome(url: str, headers: dict[str, str] | None = None) -> str:
    try:
        async with websockets.connect(url, additional_headers=headers or {}) as ws:
            try:
                await asyncio.wait_for(ws.recv(), 10)
                return "ok"
            except websockets.ConnectionClosed as e:
                return f"close {e.rcvd.code if e.rcvd else 1006}"
    except websockets.InvalidStatus as e:
        return f"http {e.response.status_code}"


# credential -> (create, short poll, long poll, sse, websocket, generate, cancel)
MATRIX = {
    "no key": (401, 401, 401, 401, "http 401", 401, 401),
    "wrong key": (401, 401, 401, 401, "http 401", 401, 401),
    "other tenant": (202, 404, 404, 404, "close 4404", 200, 404),
    "owner": (202, 200, 200, 200, "ok", 200, 204),
    "token for this job": (403, 200, 200, 200, "ok", 403, 204),
    "token for another job": (403, 404, 404, 404, "close 4404", 403, 404),
    "expired token": (401, 401, 401, 401, "http 401", 401, 401),
    "forged token": (401, 401, 401, 401, "http 401", 401, 401),
}


@pytest.mark.parametrize("who", MATRIX)
async def test_auth_matrix(base: str, who: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=20) as c:
        r = await c.post("/jobs", json=REVIEW, headers=bearer("key-alice"))
        assert r.status_code == 202, r.text
        job = r.json()
        other = (await c.post("/jobs", json=REVIEW, headers=bearer("key-alice"))).json()
        link_token = job["links"]["sse"].split("token=")[1]
        tokens = StreamTokens(SECRET.encode(), 3600)
        credential = {
            "no key": None,
            "wrong key": "key-mallory",
            "other tenant": "key-bob",
            "owner": "key-alice",
            "token for this job": link_token,
            "token for another job": other["links"]["sse"].split("token=")[1],
            "expired token": tokens.issue(job["id"], "alice", now=time.time() - 7200),
            "forged token": link_token[:-4] + ("AAAA" if not link_token.endswith("AAAA") else "B"),
        }[who]
        h = bearer(credential) if credential else {}
        jid = job["id"]
        got: list[Any] = [(await c.post("/jobs", json=REVIEW, headers=h)).status_code]
        got.append((await c.get(f"/jobs/{jid}", headers=h)).status_code)
        got.append((await c.get(f"/jobs/{jid}/long-poll?timeout=0.2", headers=h)).status_code)
        async with c.stream("GET", f"/jobs/{jid}/events", headers=h) as resp:
            got.append(resp.status_code)
        got.append(await ws_outcome(f"ws{base[4:]}/jobs/{jid}/ws", h))
        async with c.stream("POST", "/generate", json=REVIEW, headers=h) as resp:
            got.append(resp.status_code)
        got.append((await c.delete(f"/jobs/{jid}", headers=h)).status_code)
        assert tuple(got) == MATRIX[who]


async def test_links_carry_a_token_that_opens_the_job_without_a_header(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=20) as c:
        job = (await c.post("/jobs", json=REVIEW, headers=bearer("key-alice"))).json()
        links = job["links"]
        assert all("token=" in link for link in links.values())
        page = await c.get(links["poll"])
        assert page.status_code == 200
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert (await c.get(links["long_poll"] + "&timeout=0.2")).status_code == 200
        async with c.stream("GET", links["sse"]) as resp:
            assert resp.status_code == 200
            assert resp.headers["x-content-type-options"] == "nosniff"
        assert await ws_outcome(f"ws{base[4:]}{links['ws']}") == "ok"
        # The query parameter takes stream tokens only: never an API key in a URL.
        r = await c.get(f"/jobs/{job['id']}", params={"token": "key-alice"})
        assert r.status_code == 401 and "Authorization header" in r.json()["error"]


async def test_401_says_how_to_authenticate(base: str) -> None:
    async with httpx.AsyncClient(base_url=base) as c:
        r = await c.get("/jobs/abc")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert set(r.json()) == {"error", "detail"} and "Authorization" in r.json()["error"]


async def test_generate_names_the_job_and_its_token(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=20) as c:
        async with c.stream("POST", "/generate", json=REVIEW, headers=bearer("key-alice")) as r:
            assert r.status_code == 200
            job_id, token = r.headers["x-job-id"], r.headers["x-stream-token"]
            assert r.headers["location"] == f"/jobs/{job_id}"
        assert (await c.get(f"/jobs/{job_id}", params={"token": token})).status_code == 200


async def test_open_paths_stay_open_and_openapi_declares_bearer(base: str) -> None:
    async with httpx.AsyncClient(base_url=base) as c:
        for path in ("/healthz", "/readyz", "/metrics", "/docs", "/"):
            assert (await c.get(path)).status_code == 200, path
        spec = (await c.get("/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    assert any(s.get("scheme") == "bearer" for s in schemes.values())
    create = spec["paths"]["/jobs"]["post"]
    assert {"401", "422", "429", "503"} <= set(create["responses"])
    body = create["responses"]["429"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/ErrorBody")
