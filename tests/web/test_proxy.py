"""deploy/nginx.conf in front of a real uvicorn, through a real nginx: every live mode, resume,
the body limit and nginx's own answers.

The nginx runs from the very file, with only its listen port, upstream address and log path
changed, included by a minimal main config (as a distribution's nginx.conf includes conf.d/),
in the foreground with its pid, logs and temp files in a temporary directory. That main config
turns gzip on for event streams, as a careless one might: the site must keep SSE unwrapped.

Needs nginx (Debian's ``nginx`` package; ``bash scripts/test`` installs it when root, and
``NGINX_PATH`` may name one). Skips when it is missing, except under CI (``CI`` set), where it
fails — as the browser test does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
import websockets
from httpx_sse import aconnect_sse
from pydantic import SecretStr

from reviewstream.settings import Settings
from reviewstream.web import create_app, server_options
from reviewstream.wire import CloseCode

from tests.support import followers as fl
from tests.support.servers import free_port, serve

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
# deploy/nginx.conf's client_max_body_size is REVIEWSTREAM_MAX_REQUEST_BYTES's default.
MAX_REQUEST_BYTES = Settings.model_fields["max_request_bytes"].default
KEY = "key-alice"
AUTH = {"Authorization": f"Bearer {KEY}"}
REVIEW = {
    "employee_name": "Frances Allen",
    "employee_review_points": "Optimizing compilers; parallelism; mentoring",
    "length_words": 80,
}

MAIN_CONFIG = """\
daemon off;
{user}
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    gzip on;
    gzip_min_length 1;
    gzip_types text/event-stream application/json;
    include {dir}/reviewstream.conf;
}}
"""


def unavailable(reason: str) -> NoReturn:
    """Skip on a developer machine; fail under CI, which installs nginx."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


def nginx_binary() -> str | None:
    explicit = os.environ.get("NGINX_PATH")
    if explicit:
        return explicit
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def site_config(listen_port: int, upstream_port: int, logs: Path) -> str:
    """deploy/nginx.conf with its port, upstream and log directory changed, nothing else."""
    text = CONFIG.read_text()
    for old, new in (
        ("listen 80;", f"listen 127.0.0.1:{listen_port};"),
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};"),
        ("/var/log/nginx/", f"{logs}/"),
    ):
        assert text.count(old) == 1, f"{CONFIG} no longer has {old!r} once: update this test"
        text = text.replace(old, new)
    return text


@dataclass
class Nginx:
    url: str
    dir: Path

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[4:]

    def access_log(self) -> str:
        return (self.dir / "reviewstream.access.log").read_text()

    def error_log(self) -> str:
        return (self.dir / "error.log").read_text()


@contextlib.asynccontextmanager
async def nginx_in_front_of(upstream_port: int) -> AsyncIterator[Nginx]:
    binary = nginx_binary()
    if binary is None:
        unavailable("no nginx found (apt-get install nginx, or set NGINX_PATH)")
    work = Path(tempfile.mkdtemp(prefix="rs-test-nginx-"))
    port = free_port()
    (work / "reviewstream.conf").write_text(site_config(port, upstream_port, work))
    user = "user root;" if os.geteuid() == 0 else ""  # else its workers would run as nobody
    (work / "nginx.conf").write_text(MAIN_CONFIG.format(dir=work, user=user))
    # -e: the error log from the start, before the config is read (nginx >= 1.19.5).
    args = ["-p", str(work), "-c", str(work / "nginx.conf"), "-e", str(work / "error.log")]
    proc = await asyncio.create_subprocess_exec(
        binary, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    nginx = Nginx(f"http://127.0.0.1:{port}", work)
    try:
        async with asyncio.timeout(10):
            while True:
                if proc.returncode is not None:
                    pytest.fail(f"nginx exited with {proc.returncode}:\n{nginx.error_log()}")
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    await writer.wait_closed()
                    break
                await asyncio.sleep(0.02)
        yield nginx
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
async def proxy(redis_server: str) -> AsyncIterator[Nginx]:
    """nginx in front of the app (with API keys, as on the internet), for the whole module."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=redis_server,
        key_prefix="rs-test-proxy",
        api_keys=SecretStr(f"alice:{KEY}"),
        token_secret=SecretStr("test-proxy-secret"),
        # A job runs ~2.5 s (about 100 tokens): a long poll held 1 s times out while it runs.
        sim_tokens_per_second=40,
        sim_first_token_ms=300,
        worker_grace_seconds=0.2,
        max_request_bytes=MAX_REQUEST_BYTES,
    )
    # As `reviewstream serve` runs it: the app's server options, forwarded headers trusted.
    app = create_app(settings)
    async with serve(app, proxy_headers=True, **server_options(settings)) as app_url:
        async with nginx_in_front_of(int(app_url.rsplit(":", 1)[1])) as nginx:
            yield nginx


async def new_job(c: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    r = await c.post("/jobs", json={**REVIEW, **overrides}, headers=AUTH)
    assert r.status_code == 202, r.text
    return dict(r.json())


async def stored(c: httpx.AsyncClient, job_id: str, status: str = "done") -> list[str]:
    """The job's whole text, once it has ended."""
    result = await fl.short_poll(c, job_id, interval=0.1)
    assert result.ends[0]["status"] == status
    return result.tokens


async def test_sse_events_arrive_as_they_are_written(proxy: Nginx) -> None:
    async with (
        httpx.AsyncClient(base_url=proxy.url, headers=AUTH, timeout=10) as c,
        httpx.AsyncClient(base_url=proxy.url, timeout=10) as browser,
    ):
        job = await new_job(c, model="sim-gpt-4")  # 9.5 tokens a second, one per event
        path = f"/jobs/{job['id']}"
        tokens: list[str] = []
        behind: list[int] = []
        ends: list[str] = []
        # The job's own link, as a browser's EventSource uses it: its stream token in the URL.
        async with aconnect_sse(browser, "GET", job["links"]["sse"]) as source:
            assert source.response.status_code == 200
            assert "content-encoding" not in source.response.headers  # not gzipped
            async for event in source.aiter_sse():
                if event.event == "token":
                    tokens += json.loads(event.data)["tokens"]
                    # How far the store is ahead of the event that just arrived: a proxy that
                    # holds events back (one 4-8 KB buffer is ~50 of them) shows here.
                    page = (await c.get(path, params={"offset": event.id})).json()
                    behind.append(page["next_offset"] - int(event.id))
                    if len(behind) == 5:
                        assert (await c.delete(path)).status_code == 204
                elif event.event == "end":
                    ends.append(json.loads(event.data)["status"])
                    break
        assert max(behind) <= 8, behind
        assert ends == ["cancelled"]
        assert tokens == await stored(c, job["id"], "cancelled")
    log = proxy.access_log()
    assert f"GET /jobs/{job['id']}/events " in log
    assert "token=" not in log  # stream tokens stay out of the access log


async def test_sse_resumes_from_last_event_id(proxy: Nginx) -> None:
    async with httpx.AsyncClient(base_url=proxy.url, headers=AUTH, timeout=10) as c:
        job_id = (await new_job(c))["id"]
        first = await fl.sse(c, job_id, stop_after=5)
        assert first.last_id is not None and first.ends == []
        rest = await fl.sse(c, job_id, last_event_id=first.last_id)
        assert rest.ends[0]["status"] == "done"
        assert first.tokens + rest.tokens == await stored(c, job_id)


async def test_websocket_follows_a_job_to_its_end(proxy: Nginx) -> None:
    async with httpx.AsyncClient(base_url=proxy.url, headers=AUTH, timeout=10) as c:
        job = await new_job(c)
        tokens: list[str] = []
        # The page's own origin: the service compares it with the Host nginx passes on.
        async with websockets.connect(
            proxy.ws_url + job["links"]["ws"],
            origin=proxy.url,  # type: ignore[arg-type]
        ) as sock:
            async for raw in sock:
                message = json.loads(raw)
                if message["type"] == "tokens":
                    assert message["offset"] == len(tokens)
                    tokens += message["tokens"]
                else:
                    assert message["type"] == "end" and message["status"] == "done"
            assert sock.close_code == CloseCode.END_OF_JOB
        assert tokens == await stored(c, job["id"])


async def test_held_long_polls_answer_through_the_proxy(proxy: Nginx) -> None:
    async with httpx.AsyncClient(base_url=proxy.url, headers=AUTH, timeout=10) as c:
        job_id = (await new_job(c))["id"]
        path = f"/jobs/{job_id}/long-poll"
        # Held until the first tokens are written.
        page = (await c.get(path, params={"offset": 0, "timeout": 10})).json()
        assert page["tokens"] and page["offset"] == 0
        # Held to its timeout: nothing comes past this offset while the job runs.
        started = time.monotonic()
        r = await c.get(path, params={"offset": 10**6, "timeout": 1})
        assert time.monotonic() - started >= 0.9
        assert r.status_code == 200, r.text
        assert r.json()["tokens"] == [] and not r.json()["done"]


async def test_a_body_past_the_limit_is_refused_at_the_proxy(proxy: Nginx) -> None:
    limit = MAX_REQUEST_BYTES
    body = json.dumps(REVIEW).encode()

    def padded(size: int) -> bytes:
        return body + b" " * (size - len(body))

    async with httpx.AsyncClient(base_url=proxy.url, headers=AUTH, timeout=10) as c:
        headers = {"content-type": "application/json"}
        at_limit = await c.post("/jobs", content=padded(limit), headers=headers)
        assert at_limit.status_code == 202, at_limit.text
        past = await c.post("/jobs", content=padded(limit + 1), headers=headers)
        assert past.status_code == 413
        assert past.json() == {"error": f"request body larger than {limit} bytes", "detail": None}
    assert "client intended to send too large body" in proxy.error_log()  # nginx said no


async def test_no_upstream_is_a_json_503_with_retry_after() -> None:
    async with nginx_in_front_of(free_port()) as nginx, httpx.AsyncClient() as c:
        r = await c.get(nginx.url + "/healthz")
        assert r.status_code == 503
        assert r.headers["retry-after"] == "5"
        assert r.json() == {"error": "service unavailable, try again", "detail": None}
