"""No secret reaches a log, in either format: a keyed ``reviewstream serve`` (with its worker
process; the JSON case with two API processes) runs as real processes, every mode is driven
with stream tokens, and all its output is searched for the API key, the token secret, every
stream token and every token signature. In JSON, every line is one JSON object."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from pydantic import SecretStr

from reviewstream.observe.logs import JsonFormatter, Redactor, secrets_of
from reviewstream.settings import Settings
from reviewstream.wire import MODES

from tests.support import followers as fl
from tests.support.procs import environment, start, stop_all, wait_ready
from tests.support.servers import free_port

API_KEY = "key-alice-3f9a0c"
OTHER_KEY = "key-bob-77d1e2"
SECRET = "token-secret-5b1e9d"
REVIEW = {"employee_name": "Grace Hopper", "employee_review_points": "COBOL", "length_words": 60}


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


async def drive_every_mode(base: str) -> list[str]:
    """Jobs followed to their end in every mode with ``?token=``, and the refusals a log names;
    returns every stream token used."""
    tokens: list[str] = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:

        async def job() -> tuple[str, str]:
            r = await c.post("/jobs", json=REVIEW, headers=bearer(API_KEY))
            assert r.status_code == 202, r.text
            token = r.json()["links"]["sse"].split("token=")[1]
            tokens.append(token)
            return r.json()["id"], token

        async def follow(mode: str) -> fl.Result:
            job_id, token = await job()
            if mode == "websocket":
                url = f"ws{base[4:]}/jobs/{job_id}/ws?token={token}"
                result = fl.Result()
                async with websockets.connect(url) as ws:
                    async for raw in ws:
                        message = json.loads(raw)
                        if message["type"] == "tokens":
                            result.tokens += message["tokens"]
                        elif message["type"] == "end":
                            result.ends.append(message)
                return result
            async with httpx.AsyncClient(base_url=base, timeout=30, params={"token": token}) as t:
                return await fl.follow(mode, t, base, job_id)

        results = await asyncio.gather(*(follow(mode) for mode in MODES))
        assert all(len(r.ends) == 1 and r.tokens for r in results)
        job_id, token = await job()
        # A stream token in the header; an API key where only tokens go (401); a wrong key.
        assert (await c.get(f"/jobs/{job_id}", headers=bearer(token))).status_code == 200
        assert (await c.get(f"/jobs/{job_id}", params={"token": API_KEY})).status_code == 401
        assert (await c.get(f"/jobs/{job_id}", headers=bearer(OTHER_KEY))).status_code == 401
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        tokens.append(forged)
        bad = f"ws{base[4:]}/jobs/{job_id}/ws?token={forged}"
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(bad):
                pass
    return tokens


@pytest.mark.parametrize("log_format,processes", [("text", 1), ("json", 2)])
async def test_no_secret_in_any_line(
    redis_url: str, tmp_path: Path, log_format: str, processes: int
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = environment(
        redis_url,
        {
            "api_keys": f"alice:{API_KEY}",
            "token_secret": SECRET,
            "log_format": log_format,
            "sim_tokens_per_second": "400",
        },
    )
    args = ["serve", "--port", str(port), "--processes", str(processes)]
    serve = await start("serve", args, env, tmp_path)
    try:
        await wait_ready(base, serve)
        tokens = await drive_every_mode(base)
    finally:
        await stop_all([serve])
    lines = [line for line in serve.log.read_text().splitlines() if line.strip()]
    text = "\n".join(lines)
    for secret in (API_KEY, SECRET, *tokens, *(t.rsplit(".", 1)[1] for t in tokens)):
        assert secret not in text, f"{secret!r} is in the log"
    # The lines that carried them are there, redacted (the test searched something).
    for path in (
        r"/jobs/\w+\?",
        r"/jobs/\w+/long-poll\?",
        r"/jobs/\w+/events\?",
        r"/jobs/\w+/ws\?",
    ):
        assert re.search(path + r"(\S*&)?token=\[redacted\]", text), path  # each mode's line
    assert re.search(r"WebSocket /jobs/\w+/ws\?token=\[redacted\]", text)  # uvicorn's error log
    if log_format == "json":
        entries = [json.loads(line) for line in lines]  # every line one JSON object
        assert all(
            isinstance(e, dict) and {"ts", "level", "logger", "message"} <= set(e) for e in entries
        )
        access = [e for e in entries if e["logger"] == "uvicorn.access"]
        modes = {e.get("mode") for e in access if e.get("status") == 200}
        assert {"short_poll", "long_poll", "sse"} <= modes
        assert any(e["status"] == 401 and "job_id" in e for e in access)
        assert any(e.get("mode") == "websocket" for e in entries if e["logger"] == "uvicorn.error")
        # A held stream's close: its job, mode and duration.
        closed = {e["mode"] for e in entries if "duration_ms" in e and e.get("key") == "alice"}
        assert {"sse", "websocket"} <= closed
    else:
        assert not lines[0].startswith("{")


@pytest.mark.parametrize(
    "line,kept",
    [
        (
            "GET /jobs/j1/events?offset=3&token=rst1.j1.alice.99.c2ln HTTP/1.1",
            "offset=3&token=[redacted] HTTP",
        ),
        ("header Authorization: Bearer sk-live-123", "Authorization: [redacted]"),
        ("authorization='Basic dXNlcjpwYXNz'", "authorization='[redacted]'"),
        ("connecting to redis://:hunter22@10.0.0.1:6379/0", "redis://:[redacted]@10.0.0.1:6379/0"),
        ("rediss://user:p%40ss@host/0 is down", "rediss://user:[redacted]@host/0"),
        ('{"x-api-key": "sk-ant-999"}', '"x-api-key": "[redacted]"'),
        ("a token rst1.j2.bob.99.c2ln in a message", "a token rst1.[redacted] in"),
        ("stream-token: rst1.x.y.1.z", "stream-token: [redacted]"),
        (
            "openai_api_key=sk-1234 and apikey: 'abcd'",
            "openai_api_key=[redacted] and apikey: '[redacted]'",
        ),
        ("max_output_tokens=800 offset=3", "max_output_tokens=800 offset=3"),
    ],
)
def test_redactor_removes_what_is_shaped_like_a_credential(line: str, kept: str) -> None:
    assert kept in Redactor()(line)


def test_redactor_removes_configured_secrets_and_settings_name_them() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        api_keys=SecretStr("alice:plain-key-1,bob:sha256:" + "ab" * 32),
        token_secret=SecretStr("the-secret"),
        openai_api_key=SecretStr("sk-openai-1"),
        redis_url="redis://default:pw-4321@localhost:6379/0",
    )
    found = secrets_of(settings)
    assert {"plain-key-1", "ab" * 32, "the-secret", "sk-openai-1", "pw-4321"} <= set(found)
    redact = Redactor(found)
    assert redact("key plain-key-1 and the-secret") == "key [redacted] and [redacted]"


def test_json_lines_carry_the_fields_that_apply() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/jobs/abc/long-poll?offset=1", "1.1", 200), None,
    )  # fmt: skip
    entry: dict[str, Any] = json.loads(JsonFormatter().format(record))
    assert entry["status"] == 200 and entry["job_id"] == "abc" and entry["mode"] == "long_poll"
    mine = logging.LogRecord("reviewstream.x", logging.WARNING, __file__, 1, "m %s", ("a",), None)
    mine.__dict__.update(job_id="j", key="alice", duration_ms=12.5)
    entry = json.loads(JsonFormatter().format(mine))
    assert entry["message"] == "m a" and entry["level"] == "warning"
    assert (entry["job_id"], entry["key"], entry["duration_ms"]) == ("j", "alice", 12.5)
