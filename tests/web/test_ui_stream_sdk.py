"""The AI SDK's own client follows reviews: Node runs ``DefaultChatTransport.reconnectToStream``
(what ``useChat({ resume: true })`` calls on mount) and ``readUIMessageStream`` from the ``ai``
package (tests/node/ui_stream/, installed by ``scripts/test`` from its lock file) against a live
server: a running review, a finished one, a keyed server with a stream token, a worker killed
mid-review, a failed job, a reload mid-review. With ``--chat`` it runs the SDK's chat itself
(``AbstractChat``, which ``useChat`` wraps) resumed as ``useChat`` does on mount. A missing
``node_modules`` is a failure, not a skip."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from reviewstream.settings import Settings
from reviewstream.web import create_app

from tests import test_durable as durable
from tests.support.live import REVIEW, new_job, stored, tuned, until_tokens
from tests.support.servers import serve
from tests.support.upstreams import Reply, ScriptedUpstream, openai_frames, running, sse
from tests.web.test_ui_stream import ALICE, end_record, keyed

NODE_DIR = Path(__file__).resolve().parents[1] / "node" / "ui_stream"
NODE_SECONDS = 60.0


async def sdk_follow(base: str, job_id: str, *options: str) -> dict[str, Any]:
    """What the AI SDK's client made of the job's stream (``follow.mjs``'s JSON line)."""
    if not (NODE_DIR / "node_modules" / "ai").is_dir():
        pytest.fail(f"the AI SDK is not installed: npm ci --prefix {NODE_DIR} (scripts/test does)")
    proc = await asyncio.create_subprocess_exec(
        "node", "follow.mjs", base, job_id, *options,
        cwd=NODE_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), NODE_SECONDS)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        pytest.fail(f"node follow.mjs did not end in {NODE_SECONDS:g} s:\n{out!r}\n{err!r}")
    assert proc.returncode == 0, f"node follow.mjs exited {proc.returncode}:\n{err.decode()}"
    result: dict[str, Any] = json.loads(out)
    return result


def deltas(result: dict[str, Any]) -> list[str]:
    return [chunk["delta"] for chunk in result["chunks"] if chunk["type"] == "text-delta"]


def types(result: dict[str, Any]) -> list[str]:
    return [str(chunk["type"]) for chunk in result["chunks"]]


def check_done(result: dict[str, Any], job_id: str, text: str, end: dict[str, Any]) -> None:
    """The client assembled exactly the stored text, each token once, and the end record."""
    assert "failed" not in result and "thrown" not in result and not result["errors"], result
    assert result["messageId"] == job_id
    assert result["text"] == text
    assert "".join(deltas(result)) == text  # no delta twice, none missing
    assert result["metadata"] == end
    assert end["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert types(result)[:2] == ["start", "text-start"]
    assert types(result)[-2:] == ["text-end", "finish"]


def check_chat(chat: dict[str, Any], job_id: str, text: str, end: dict[str, Any]) -> None:
    """The chat holds one message, the job's, with exactly the stored text, and is ready."""
    assert (chat["status"], chat["error"], chat["errors"]) == ("ready", None, []), chat
    assert chat["messages"] == [
        {"id": job_id, "role": "assistant", "text": text, "metadata": end},
    ]
    assert chat["finish"] == {
        "isAbort": False, "isDisconnect": False, "isError": False, "finishReason": "stop",
    }  # fmt: skip


async def until_followed(c: httpx.AsyncClient, followers: int = 1) -> None:
    """Until the server has ``followers`` live followers (the clients' streams are open)."""
    async with asyncio.timeout(20):
        while True:
            metrics = (await c.get("/metrics")).text
            line = next(x for x in metrics.splitlines() if x.startswith("reviewstream_followers "))
            if float(line.split()[1]) >= followers:
                return
            await asyncio.sleep(0.02)


async def test_the_sdk_follows_a_running_review(settings: Settings) -> None:
    s = tuned(settings, sim_tokens_per_second=40, sim_first_token_ms=1500)
    async with serve(create_app(s)) as base, httpx.AsyncClient(base_url=base) as c:
        job_id = await new_job(c)
        following = asyncio.create_task(sdk_follow(base, job_id))
        await until_followed(c)
        assert (await c.get(f"/jobs/{job_id}")).json()["done"] is False
        result = await following
        text = "".join(await stored(c, job_id))
        end = await end_record(c, job_id)
    check_done(result, job_id, text, end)
    assert len(deltas(result)) > 2  # followed live, a delta per batch


async def test_a_reload_mid_review_gets_the_whole_text_once(settings: Settings) -> None:
    s = tuned(settings, sim_tokens_per_second=40, sim_first_token_ms=1500)
    async with serve(create_app(s)) as base, httpx.AsyncClient(base_url=base) as c:
        job_id = await new_job(c)
        first = asyncio.create_task(sdk_follow(base, job_id))
        await until_followed(c)  # before the first token
        await until_tokens(c, job_id, 15)
        so_far = "".join(await stored_so_far(c, job_id))
        # The page mounts again: a fresh stream, and a chat that had stored its messages.
        reloaded = asyncio.create_task(sdk_follow(base, job_id))
        chat = asyncio.create_task(sdk_follow(base, job_id, "--chat", "--persisted", so_far))
        results = await asyncio.gather(first, reloaded)
        text = "".join(await stored(c, job_id))
        end = await end_record(c, job_id)
    for result in results:
        check_done(result, job_id, text, end)
    # The reload got what was stored in its first delta, then the rest live.
    assert len(deltas(results[1])[0]) > len(deltas(results[0])[0])
    # The chat rebuilt its message from `start`: the stored part is not there twice.
    check_chat(await chat, job_id, text, end)


async def test_the_sdk_replays_a_finished_review(settings: Settings) -> None:
    async with serve(create_app(settings)) as base, httpx.AsyncClient(base_url=base) as c:
        job_id = await new_job(c)
        text = "".join(await stored(c, job_id))
        end = await end_record(c, job_id)
        result = await sdk_follow(base, job_id)
    check_done(result, job_id, text, end)


async def test_the_sdk_follows_with_a_stream_token_on_a_keyed_server(settings: Settings) -> None:
    s = keyed(settings, sim_tokens_per_second=100)
    async with serve(create_app(s)) as base, httpx.AsyncClient(base_url=base) as c:
        job = (await c.post("/jobs", json=REVIEW, headers=ALICE)).json()
        token = job["links"]["ui_stream"].split("token=")[1]
        result = await sdk_follow(base, job["id"], "--token", token)
        refused = await sdk_follow(base, job["id"])
        c.headers.update(ALICE)
        text = "".join(await stored(c, job["id"]))
        end = await end_record(c, job["id"])
    check_done(result, job["id"], text, end)
    assert refused["status"] == 401 and "Authorization" in refused["failed"]


async def test_the_sdk_follows_a_review_whose_worker_is_killed(
    settings: Settings, tmp_path: Path
) -> None:
    async with durable.api(settings) as (base, c), durable.workers(settings, tmp_path) as w:
        first = await w.start()
        job_id = await durable.create(c)
        following = asyncio.create_task(sdk_follow(base, job_id))
        chatting = asyncio.create_task(sdk_follow(base, job_id, "--chat"))
        await until_followed(c, 2)
        await durable.until(c, job_id, lambda p: len(p["tokens"]) >= 15, 30)
        await w.start()
        first.proc.send_signal(signal.SIGKILL)
        await first.proc.wait()
        final = await durable.until(c, job_id, lambda p: p["done"], 30)
        result, chat = await asyncio.gather(following, chatting)
        end = await end_record(c, job_id)
    assert (final["status"], final["attempts"]) == ("done", 2)
    text = "".join(final["tokens"])
    check_done(result, job_id, text, end)
    # The client heard the job go on, as transient data parts, never as rewritten text.
    notices = [chunk["data"] for chunk in result["chunks"] if chunk["type"] == "data-status"]
    assert all(
        chunk.get("transient") for chunk in result["chunks"] if chunk["type"] == "data-status"
    )
    assert [n["attempt"] for n in notices if n["status"] == "running"] == [2], notices
    # useChat's chat: one message, the stored text; the notice reached onData, not the message.
    check_chat(chat, job_id, text, end)
    assert [part["data"] for part in chat["data"]] == notices


async def stored_so_far(c: httpx.AsyncClient, job_id: str) -> list[str]:
    tokens: list[str] = (await c.get(f"/jobs/{job_id}", params={"limit": 10000})).json()["tokens"]
    return tokens


async def test_the_sdk_surfaces_a_failed_reviews_error(settings: Settings) -> None:
    async with running(ScriptedUpstream()) as upstream:
        boom = sse({"error": {"message": "boom"}})
        # The error comes once both clients follow (a pause well inside the idle timeout).
        upstream.script(Reply(frames=[*openai_frames(["Half", " way"], done=False)[:3], 5.0, boom]))
        s = tuned(settings, openai_base_url=upstream.url + "/v1", upstream_max_retries=1)
        async with serve(create_app(s)) as base, httpx.AsyncClient(base_url=base) as c:
            job_id = await new_job(c, provider="openai")
            following = asyncio.create_task(sdk_follow(base, job_id))
            chatting = asyncio.create_task(sdk_follow(base, job_id, "--chat"))
            await until_followed(c, 2)
            result, chat = await asyncio.gather(following, chatting)
            end = await end_record(c, job_id)
    assert end["status"] == "failed" and "boom" in end["error"]
    assert result["text"] == "Half way"
    assert types(result)[-3:] == ["text-end", "message-metadata", "error"]
    # readUIMessageStream hands the error part to onError and, with terminateOnError, throws it.
    assert result["errors"] == [f"review failed: {end['error']}"]
    assert result["thrown"] == f"review failed: {end['error']}"
    assert result["metadata"] == end
    # useChat's chat: status "error" with the cause, the text so far kept.
    assert (chat["status"], chat["error"]) == ("error", f"review failed: {end['error']}")
    assert chat["errors"] == [chat["error"]]
    assert chat["finish"]["isError"] is True
    assert [m["text"] for m in chat["messages"]] == ["Half way"]
