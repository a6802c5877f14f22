"""A job's continued attempt, as Durable Streams readers see it: a new producer epoch after the
text already stored, never a rewrite. The API runs here (a real uvicorn, no worker of its own);
the workers are ``reviewstream worker`` processes, the first killed with SIGKILL mid-review and
the job continued by the second (``REVIEWSTREAM_ON_PRODUCER_LOSS=continue``, the default)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import httpx

from reviewstream.settings import Settings
from reviewstream.streams import offsets

from tests import test_durable as durable
from tests.web.test_durable_streams import parse_sse, read_sse, url


def position(raw: str) -> int:
    """A Durable Streams offset's token offset N."""
    n = offsets.decode(raw)
    assert n is not None
    return n


async def long_poll_to_the_end(
    c: httpx.AsyncClient, job_id: str
) -> list[tuple[int, str, bytes, str | None]]:
    """A long-poll reader from ``-1`` to the closure: (offset, next offset, body, epoch) of
    each answer that carried text."""
    answers: list[tuple[int, str, bytes, str | None]] = []
    offset, cursor = "-1", ""
    while True:
        params = {"offset": offset, "live": "long-poll", **({"cursor": cursor} if cursor else {})}
        r = await c.get(url(job_id), params=params)
        assert r.status_code in (200, 204), r.text
        start = 0 if offset == "-1" else position(offset)
        if r.content:
            answers.append((start, r.headers["stream-next-offset"], r.content,
                            r.headers.get("producer-epoch")))  # fmt: skip
        offset, cursor = r.headers["stream-next-offset"], r.headers.get("stream-cursor", "")
        if r.headers.get("stream-closed") == "true":
            return answers


async def test_a_continued_attempt_is_a_new_producer_epoch_never_a_rewrite(
    settings: Settings, tmp_path: Path
) -> None:
    async with durable.api(settings) as (_, c), durable.workers(settings, tmp_path) as w:
        first = await w.start(on_producer_loss="continue")
        job_id = await durable.create(c)
        reading = asyncio.create_task(
            read_sse(c, url(job_id), params={"offset": "-1", "live": "sse"})
        )
        polling = asyncio.create_task(long_poll_to_the_end(c, job_id))
        await durable.until(c, job_id, lambda p: len(p["tokens"]) >= 15, 30)
        before = (await c.head(url(job_id))).headers["producer-epoch"]
        await w.start(on_producer_loss="continue")
        first.proc.send_signal(signal.SIGKILL)
        await first.proc.wait()
        await durable.until(c, job_id, lambda p: p["attempts"] == 2, 30)
        late = asyncio.create_task(read_sse(c, url(job_id), params={"offset": "-1", "live": "sse"}))
        final = await durable.until(c, job_id, lambda p: p["done"], 30)
        r, body = await asyncio.wait_for(reading, 30)
        late_r, late_body = await asyncio.wait_for(late, 30)
        polled = await asyncio.wait_for(polling, 30)
        catch_up = await c.get(url(job_id), params={"offset": "-1"})
    assert (final["status"], final["attempts"]) == ("done", 2)
    text = "".join(final["tokens"])
    assert r.status_code == 200 and before == "1"
    assert r.headers["producer-epoch"] == "1"  # the epoch the reader started in
    events = parse_sse(body)
    # The reader got exactly the stored text: what the first attempt wrote is not sent again.
    assert "".join(data for kind, data, _ in events if kind == "data") == text
    controls = [json.loads(data) for kind, data, _ in events if kind == "control"]
    epochs = [(i, f["producerEpoch"]) for i, f in enumerate(controls) if "producerEpoch" in f]
    assert [epoch for _, epoch in epochs] == [2], controls
    # The new epoch is told at the offset where the first attempt's text ends, before any of
    # the second attempt's text, and the stream then closes once, done.
    at, _ = epochs[0]
    resumed = position(controls[at]["streamNextOffset"])
    assert 0 < resumed < len(final["tokens"])
    assert not any(f.get("streamClosed") for f in controls[:-1])
    assert controls[-1]["streamClosed"] is True and controls[-1]["jobStatus"] == "done"
    assert controls[-1]["streamNextOffset"] == offsets.encode(len(final["tokens"]))
    # A catch-up read after the end: the whole text, closed, by the second producer epoch.
    assert catch_up.status_code == 200 and catch_up.content == text.encode()
    assert catch_up.headers["producer-epoch"] == "2"
    assert catch_up.headers["stream-closed"] == "true"
    # A reader that comes during the second attempt starts in its epoch (no notice in band:
    # nothing changed while it read), and gets the same text.
    assert late_r.status_code == 200, late_body
    assert late_r.headers["producer-epoch"] == "2"
    late_events = parse_sse(late_body)
    assert "".join(d for k, d, _ in late_events if k == "data") == text
    assert not any("producerEpoch" in d for k, d, _ in late_events if k == "control")
    # A long-poll reader: the same text; each answer names the epoch it was read in, live or
    # stored, and every answer from the continuation on is the second's.
    assert b"".join(body for _, _, body, _ in polled) == text.encode()
    told = [epoch for _, _, _, epoch in polled]
    assert told[0] == "1" and told == sorted(str(e) for e in told), polled
    assert all(epoch == "2" for start, _, _, epoch in polled if start >= resumed), polled
