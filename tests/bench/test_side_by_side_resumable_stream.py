"""``benchmarks/side_by_side.py --peer resumable-stream``: the peer's Node server (its launcher,
as the side-by-side writes it) run on stand-ins for the two npm packages it imports, a whole run
on it with reviewstream's followers, and the script's options and refusals.

The npm packages are never installed here: that is the benchmark's job, not CI's. The stand-in
for ``resumable-stream`` keeps its API (``createResumableStreamContext``,
``createNewResumableStream``, ``resumeExistingStream``: ``undefined`` for no stream, ``null`` for
one already done) in memory; the one for ``redis`` only connects. What runs is the launcher's
own code: the producer's pace, the SSE events, the read-back. The runs need ``node`` on PATH.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pytest

from reviewstream.bench.plan import Scenario, ServerConfig
from reviewstream.bench.stats import run_summary

sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))
import side_by_side
from peers import Install, resumable_stream

TOKENS = [" The", " review", " covers", " Ada", "'s", " work", ".", "\n\n", " Great", " job", "."]
RESUMABLE_STAND_IN = """\
const streams = new Map();
exports.createResumableStreamContext = ({ publisher, subscriber }) => {
  if (!publisher || !subscriber) throw new Error("publisher and subscriber expected");
  return {
    async createNewResumableStream(id, makeStream) {
      const entry = { chunks: [], readers: new Set(), done: false };
      streams.set(id, entry);
      const source = makeStream().getReader();
      (async () => {
        for (;;) {
          const { done, value } = await source.read();
          if (done) break;
          entry.chunks.push(value);
          for (const reader of entry.readers) reader.enqueue(value);
        }
        entry.done = true;
        for (const reader of entry.readers) reader.close();
      })();
      return new ReadableStream({ start(controller) { controller.close(); } });
    },
    async resumeExistingStream(id) {
      const entry = streams.get(id);
      if (!entry) return undefined;
      if (entry.done) return null;
      let mine;
      return new ReadableStream({
        start(controller) {
          mine = controller;
          for (const chunk of entry.chunks) controller.enqueue(chunk);
          entry.readers.add(controller);
        },
        cancel() { entry.readers.delete(mine); },
      });
    },
  };
};
"""
REDIS_STAND_IN = """\
exports.createClient = ({ socket }) => {
  if (!socket || !socket.path) throw new Error("a unix socket path expected");
  return { connect: async () => {}, quit: async () => {} };
};
"""
needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="needs node on PATH")


def parse(*argv: str) -> argparse.Namespace:
    return side_by_side.parser().parse_args(list(argv))


def _package(root: Path, name: str, version: str, source: str) -> None:
    where = root / "node_modules" / name
    where.mkdir(parents=True)
    manifest = {"name": name, "version": version, "main": "index.js"}
    (where / "package.json").write_text(json.dumps(manifest))
    (where / "index.js").write_text(source)


@pytest.fixture
def install(tmp_path: Path) -> Install:
    """The launcher beside stand-ins at the pinned versions, as ``ensure_installed`` leaves it."""
    version = resumable_stream.DEFAULT_VERSION
    _package(tmp_path, "resumable-stream", version, RESUMABLE_STAND_IN)
    name, pin = resumable_stream.REDIS_CLIENT.rsplit("@", 1)
    _package(tmp_path, name, pin, REDIS_STAND_IN)
    resumable_stream._NODE.write_launcher(tmp_path)
    return Install(tmp_path, version, "test")


def _scenario(
    jobs: int, per_job: int, rate: float = 100.0, first_token_ms: float = 150.0
) -> Scenario:
    return Scenario(
        "side-by-side", "alone", ServerConfig(rate, 0.0, first_token_ms), ("sse",), jobs,
        per_job, 1.0, 50,
    )  # fmt: skip


def test_installed_means_the_package_and_its_redis_client_at_their_pins(install: Install) -> None:
    node = resumable_stream._NODE
    assert node.is_installed(install.directory, resumable_stream.DEFAULT_VERSION)
    assert not node.is_installed(install.directory, "0.0.1")
    shutil.rmtree(install.directory / "node_modules" / "redis")
    assert not node.is_installed(install.directory, resumable_stream.DEFAULT_VERSION)


@needs_node
@pytest.mark.timeout(60)
async def test_a_run_follows_every_job_at_the_models_pace_and_counts_its_redis(
    install: Install,
) -> None:
    scenario = _scenario(jobs=2, per_job=3)
    async with resumable_stream.started(install) as system:
        assert system.redis is not None and system.server_pid is not None
        run = await resumable_stream.run_load(scenario, system, TOKENS, tag="t")
    assert run.errors == []
    assert len(run.traces) == 6 and len({t.job.id for t in run.traces}) == 2
    for trace in run.traces:
        assert trace.error_count == 0, trace.errors
        assert trace.tokens == TOKENS and trace.end_status == "done"
        assert trace.live_latencies_ms()  # attached before the first token
        assert trace.first_token_at is not None
        assert trace.first_token_at - trace.job.posted_at >= 0.15  # the time to first token
        # token i is due i / rate after the first: 10 intervals of 10 ms
        assert trace.stamps[-1] - trace.stamps[0] >= 0.09
    assert run.appended_tokens == 2 * len(TOKENS)
    summary = run_summary(run)
    assert summary["modes"]["sse"]["errors"] == 0
    cpu = summary["cpu_us_per_produced_token"]
    assert cpu["api"] is not None and cpu["api"] > 0  # the Node process
    assert cpu["worker"] is None  # it has no worker process
    assert cpu["redis"] is not None  # its own redis-server, by INFO cpu


@needs_node
@pytest.mark.timeout(60)
async def test_a_follower_of_an_unknown_or_finished_job_is_refused_not_held(
    install: Install,
) -> None:
    import httpx

    async with resumable_stream.started(install) as system:
        await resumable_stream.run_load(
            _scenario(1, 1, rate=500, first_token_ms=0), system, TOKENS, tag="t"
        )
        async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as client:
            assert (await client.get("/jobs/nope/events")).status_code == 404
            assert (await client.get("/jobs/job-1/events")).status_code == 410
            page = (await client.get("/jobs/job-1")).json()
    assert page == {"tokens": TOKENS, "done": True, "status": "done"}


def test_resumable_stream_is_compared_in_sse_only() -> None:
    options, peer, _, version = side_by_side.options_from_args(
        parse("--peer", "resumable-stream", "--output", "x", "--followers", "1,100,500,1000")
    )
    assert peer is resumable_stream and version == resumable_stream.DEFAULT_VERSION
    assert options.modes == ("sse",) and options.followers == (1, 100, 500, 1000)
    assert options.worker_concurrency is not None and options.worker_concurrency >= 100
    with pytest.raises(SystemExit, match="sse only, not long_poll"):
        side_by_side.options_from_args(parse("--peer", "resumable-stream", "--modes", "long"))


def test_without_node_it_says_what_is_missing_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    peers, out_dir = tmp_path / "peers", tmp_path / "out"
    argv = ["--peer", "resumable-stream", "--peer-dir", str(peers), "--output", str(out_dir)]
    with pytest.raises(SystemExit) as exit_:
        side_by_side.start(argv)
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1, err
    assert "resumable-stream@" in err and "not found: node, npm" in err
    assert not out_dir.exists() and not peers.exists()


def test_the_table_shows_cpu_per_produced_token_by_kind_for_both_sides() -> None:
    def side(api: float, worker: float | None, redis: float) -> dict[str, object]:
        total = api + (worker or 0.0) + redis
        cpu = {"api": api, "worker": worker, "redis": redis, "total": total}
        return {
            "latency_ms": {"p50": 1.0, "p99": 2.0, "n": 10}, "errors": 0, "server_cpu_pct": 1.0,
            "redis_cpu_pct": 1.0, "client_cpu_pct": 1.0, "cpu_us_per_produced_token": cpu,
        }  # fmt: skip

    row = side_by_side.compare("sse", 100, 10, 10, side(300, 200, 50), side(250, None, 50))
    results = {
        "peer": {"name": "resumable-stream", "package": "resumable-stream", "version": "1",
                 "node": "v20"},
        "config": {"repeat": 1, "fanout_rate": 20.0, "per_job": 10},
        "tokens_per_job": 100, "loads": [row], "targets": [], "notes": [],
        "machine": {"cpu": "x", "logical_cpus": 2, "os": "y", "python": "3", "redis_server": "7"},
        "duration_s": 1.0,
    }  # fmt: skip
    text = side_by_side.table(results)
    assert "CPU per produced token" in text
    line = next(x for x in text.splitlines() if x.startswith("sse") and "550" in x)
    assert line.split()[-7:] == ["200", "50", "550", "250", "50", "300", "1.83"]
