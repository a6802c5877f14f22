"""vercel/resumable-stream (npm ``resumable-stream``) on a Redis of its own: its installation and
a small Node server around it that produces each job at the simulated model's pace.

**The server** (``LAUNCHER``, written beside the installed package) is one Node process with one
stream context (``createResumableStreamContext``, given a publisher and a subscriber client of
the ``redis`` package on the peer's private redis-server) and speaks the part of reviewstream's
HTTP API that a benchmark run uses, so that the run is reviewstream's own
(``reviewstream.bench.runner.run_scenario``: the same job creation, followers, checks and
counters):

- ``POST /config`` (before a run, outside its measured window): the tokens of every job, the
  time to first token and the rate;
- ``POST /jobs`` starts a job: ``createNewResumableStream`` with a producer that plays the
  simulated model — token ``i`` due at ``start + first token + i / rate`` (the schedule of
  reviewstream's simulated provider), then the end at once — and answers ``202 {"id"}`` once
  the stream exists; the producer's own copy of the stream is read to its end in the server
  (as the creating request's response would be), every follower attaches by ``GET``;
- ``GET /jobs/{id}/events``: an SSE follower, through ``resumeExistingStream`` (the library's
  way in for a second reader: a request on its Redis pub/sub, answered by the producer with the
  stream so far and then every chunk, one ``PUBLISH`` per reader);
- ``GET /jobs/{id}``: what the producer produced and whether it ended (the read-back; the
  library keeps no history once a stream is done).

Each chunk is one SSE event in reviewstream's own shape (``event: token`` with ``{"offset",
"tokens", "ts"}``, then ``event: end`` with ``{"status", "next_offset"}``), so reviewstream's
SSE follower reads both servers with the same code.

**The clock.** reviewstream's ``ts`` is Redis' ``TIME`` inside the append script (the token is
at Redis); the peer's is the producer's clock as it hands the token to the library, before its
trip through Redis to the readers: the peer's latency includes that trip.
"""

from __future__ import annotations

from typing import Any

import httpx

from reviewstream.bench.plan import Scenario
from reviewstream.bench.runner import Progress, run_scenario
from reviewstream.bench.server import System

from . import Install, NodePackage, PeerRun

NAME = "resumable-stream"
PACKAGE = "resumable-stream"
DEFAULT_VERSION = "2.2.13"
# The Redis client the package's default context is built on (it tests with redis 4).
REDIS_CLIENT = "redis@4.7.1"
MODES: tuple[str, ...] = ("sse",)
NOTES: tuple[str, ...] = (
    "the peer's timestamp: its producer's clock as it hands the token to resumable-stream, "
    "before the token's trip through Redis to the readers",
    "the peer's CPU: its one Node process (producer included; the API column) and its own "
    "redis-server (INFO cpu), as reviewstream's: its API and worker processes and its Redis",
)
LAUNCHER = """\
// Written by benchmarks/side_by_side.py: vercel/resumable-stream on a private Redis, producing
// each job at the simulated model's pace and serving reviewstream's SSE shape.
import http from "node:http";
import redis from "redis";
import resumable from "resumable-stream";

const port = Number(process.argv[2]);
const client = () => redis.createClient({ socket: { path: process.argv[3] } });
const publisher = client();
const subscriber = client();
await Promise.all([publisher.connect(), subscriber.connect()]);
const context = resumable.createResumableStreamContext({ publisher, subscriber });
const jobs = new Map();
let config = { tokens: [], first_token_ms: 0, rate: 1 };
let count = 0;

const seconds = () => (performance.timeOrigin + performance.now()) / 1000;
const event = (name, data) => `event: ${name}\\ndata: ${JSON.stringify(data)}\\n\\n`;

function produce(job, { tokens, first_token_ms, rate }) {
  return new ReadableStream({
    start(controller) {
      const start = performance.now() + first_token_ms;
      const tick = () => {
        const i = job.tokens.length;
        if (i < tokens.length) {
          controller.enqueue(event("token", { offset: i, tokens: [tokens[i]], ts: [seconds()] }));
          job.tokens.push(tokens[i]);
        }
        const next = job.tokens.length;
        if (next < tokens.length) {
          setTimeout(tick, Math.max(0, start + (next * 1000) / rate - performance.now()));
          return;
        }
        controller.enqueue(event("end", { status: "done", next_offset: job.tokens.length }));
        job.done = true;
        controller.close();
      };
      setTimeout(tick, Math.max(0, start - performance.now()));
    },
  });
}

async function body(req) {
  const parts = [];
  for await (const part of req) parts.push(part);
  return Buffer.concat(parts).toString();
}

function answer(res, status, value) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(value));
}

async function follow(req, res, id) {
  const stream = jobs.has(id) ? await context.resumeExistingStream(id) : undefined;
  if (!stream) {
    answer(res, stream === null ? 410 : 404, { detail: `no live stream ${id}` });
    return;
  }
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
  const reader = stream.getReader();
  res.on("close", () => reader.cancel().catch(() => {}));
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    res.write(value);
  }
  res.end();
}

async function route(req, res) {
  const path = req.url.split("?")[0];
  const parts = path.split("/");
  if (req.method === "POST" && path === "/config") {
    config = JSON.parse(await body(req));
    answer(res, 200, { tokens: config.tokens.length });
  } else if (req.method === "POST" && path === "/jobs") {
    await body(req);
    const id = `job-${++count}`;
    const job = { tokens: [], done: false };
    jobs.set(id, job);
    const own = await context.createNewResumableStream(id, () => produce(job, config));
    own.pipeTo(new WritableStream()).catch(() => {});
    answer(res, 202, { id });
  } else if (req.method === "GET" && parts[1] === "jobs" && parts[3] === "events") {
    await follow(req, res, parts[2]);
  } else if (req.method === "GET" && parts[1] === "jobs" && jobs.has(parts[2])) {
    const job = jobs.get(parts[2]);
    const status = job.done ? "done" : "running";
    answer(res, 200, { tokens: job.tokens, done: job.done, status });
  } else {
    answer(res, 404, { detail: "not found" });
  }
}

const server = http.createServer((req, res) => {
  route(req, res).catch((error) => {
    if (!res.headersSent) answer(res, 500, { detail: String(error) });
    else res.destroy();
  });
});
server.keepAliveTimeout = 60_000;
server.listen(port, "127.0.0.1", () => console.log(`listening on ${port}`));
process.on("SIGTERM", () => {
  server.close();
  server.closeAllConnections();
  Promise.allSettled([publisher.quit(), subscriber.quit()]).finally(() => process.exit(0));
});
"""
_NODE = NodePackage(NAME, PACKAGE, LAUNCHER, extras=(REDIS_CLIENT,), redis=True)
missing_tools = _NODE.missing_tools
missing_message = _NODE.missing_message
ensure_installed = _NODE.ensure_installed
started = _NODE.started


def describe(install: Install) -> dict[str, Any]:
    """The peer's part of the results document."""
    return {
        "name": NAME,
        "package": PACKAGE,
        "version": install.version,
        "redis_client": REDIS_CLIENT,
        "node": install.runtime,
        "store": "redis (a private redis-server)",
    }


def title(described: dict[str, Any]) -> str:
    """The peer as the table's heading names it."""
    return (
        f"vercel/resumable-stream ({described['package']} {described['version']}, Node "
        f"{described['node']}, on its own redis-server)"
    )


def pace(scenario: Scenario, tokens: list[str]) -> dict[str, Any]:
    """What ``POST /config`` takes: each job's tokens and the simulated model's pace."""
    server = scenario.server
    return {"tokens": tokens, "first_token_ms": server.first_token_ms, "rate": server.rate}


async def run_load(
    scenario: Scenario,
    system: System,
    tokens: list[str],
    *,
    tag: str,
    seed: int = 0,
    progress: Progress | None = None,
) -> PeerRun:
    """Run ``scenario``'s load once on the server at ``system`` (``tag`` is unused: the server
    names its jobs); ``tokens`` are each job's."""
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
        (await client.post("/config", json=pace(scenario, tokens))).raise_for_status()
    run = await run_scenario(scenario, system, seed=seed, progress=progress)
    return PeerRun(
        run.scenario, run.traces, run.duration_s, run.appended_tokens, run.before, run.after,
        run.errors,
    )  # fmt: skip
