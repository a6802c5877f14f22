"""``reviewstream bench``: a tiny plan run for real (its own redis-server and server), and the
bookkeeping that decides what counts as an error. No timing targets are asserted here: only
that the figures are sane and ordered as the modes' designs imply."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from reviewstream.bench.cli import add_arguments, options_from_args, run
from reviewstream.bench.followers import JobHandle, Trace
from reviewstream.bench.plan import MIN_CONCURRENCY, ServerConfig, build_plan
from reviewstream.bench.server import (
    cpu_seconds,
    server_cpu_seconds,
    started_system,
    worker_cpu_seconds,
)
from reviewstream.bench.stats import combine, latency_summary
from reviewstream.wire import MODES

from tests.support.cluster import LocalCluster
from tests.support.followers import LIVE_MODES


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.timeout(60)
def test_tiny_bench_writes_results_and_chart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse(
        "--quick", "--output", str(tmp_path), "--repeat", "1", "--warmup", "0",
        "--rate", "100", "--first-token-ms", "100",
    )  # fmt: skip
    assert run(args) == 0

    results = json.loads((tmp_path / "results.json").read_text())
    modes = results["modes"]
    assert set(modes) == set(MODES)
    for name in MODES:
        m = modes[name]
        for key in ("latency_ms", "ttft_ms", "requests_per_job", "bytes_per_job", "errors"):
            assert key in m, (name, key)
        assert m["errors"] == 0, (name, m["error_messages"])
        assert m["lost"] == 0 and m["duplicated"] == 0
        lat = m["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"], (name, lat)
        assert m["delivered_tokens"] > 0 and m["bytes_per_job"] > 0
        assert m["latency_live_ms"]["n"] + m["history_tokens"] == lat["n"]
        assert m["ttft_ms"] >= 100  # never before the simulated model's first token
    # Streams wait for tokens; a 0.25 s short poll waits for its timer.
    for live in LIVE_MODES:
        assert modes[live]["latency_ms"]["p50"] < modes["short_poll"]["latency_ms"]["p50"]
        assert modes[live]["latency_ms"]["p99"] < 250
    assert 20 < modes["short_poll"]["latency_ms"]["p50"] < 400
    assert modes["sse"]["requests_per_job"] == modes["websocket"]["requests_per_job"] == 1
    assert (
        modes["long_poll"]["requests_per_job"] > 1 and modes["short_poll"]["requests_per_job"] > 1
    )
    assert set(results["together"]) == set(MODES)
    assert all(m["errors"] == 0 for m in results["together"].values())
    assert results["producing"]["redis_commands_per_appended_token"] > 0
    # CPU per produced token by process kind: serve's worker runs in a process of its own.
    for entry in (results["producing"], modes["sse"], results["fanout"]["sse"][0]):
        cpu = entry["cpu_us_per_produced_token"]
        assert cpu["api"] > 0 and cpu["worker"] > 0 and cpu["redis"] > 0, cpu
        assert cpu["total"] == pytest.approx(cpu["api"] + cpu["worker"] + cpu["redis"], abs=0.01)
    assert results["config"]["worker_concurrency"] >= 1
    assert results["machine"]["logical_cpus"] >= 1
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "websocket" in out and "p99 ms" in out
    assert "CPU per produced token" in out and "worker µs/tok" in out


def test_without_the_bench_extra_it_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    assert run(parse("--quick", "--output", str(tmp_path / "out"))) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1 and "reviewstream[bench]" in err, err
    assert not (tmp_path / "out").exists()  # nothing started


def test_trace_counts_lost_duplicated_and_wrong_tokens() -> None:
    trace = Trace("sse", JobHandle("j", posted_at=0.0))
    trace.on_tokens(0, ["a", "b"], [0.0, 0.0], 0.001)
    trace.on_tokens(1, ["b", "c"], [0.0, 0.0], 0.002)  # "b" again
    trace.on_tokens(4, ["e"], [0.0], 0.003)  # "d" never came
    trace.on_end("done", 5, 0.004)
    trace.verify(["a", "b", "c", "d", "X"])
    assert (trace.duplicated, trace.lost, trace.mismatched) == (1, 1, 1)
    assert trace.error_count == 3
    assert len(trace.latencies_ms) == 4


def test_trace_without_end_is_an_error() -> None:
    trace = Trace("long_poll", JobHandle("j", posted_at=0.0))
    trace.on_tokens(0, ["a"], [0.0], 0.001)
    trace.verify(["a", "b"])
    assert trace.error_count == 1 and trace.errors == ["did not see the end of the job"]


def test_medians_over_repetitions_but_errors_add_up() -> None:
    runs = [
        {"latency_ms": latency_summary([1.0, 2.0, 3.0]), "errors": 0, "bytes_per_job": 10.0},
        {"latency_ms": latency_summary([5.0]), "errors": 2, "bytes_per_job": 30.0},
        {"latency_ms": latency_summary([2.0]), "errors": 1, "bytes_per_job": 20.0},
    ]
    combined = combine(runs)
    assert combined["errors"] == 3
    assert combined["bytes_per_job"] == 20.0
    assert combined["latency_ms"]["p50"] == 2.0


def test_plan_has_baselines_and_no_duplicate_runs() -> None:
    plan = build_plan(options_from_args(parse("--output", "x")))
    labels = [s.label for s in plan]
    assert len(labels) == len(set(labels))
    thousand = [s for s in plan if s.followers == 1000 and s.kind == "alone"]
    assert {s.modes[0] for s in thousand} == set(MODES)
    assert all(s.jobs == 100 and s.per_job == 10 for s in thousand)
    for s in plan:
        if s.kind == "alone":
            assert any(
                b.kind == "baseline" and b.server == s.server and b.jobs == s.jobs for b in plan
            )
    servers = [s.server for s in plan]
    assert servers == sorted(servers, key=servers.index)  # grouped: one server start each


def test_every_job_of_the_largest_load_produces_at_once_unless_told() -> None:
    assert options_from_args(parse("--output", "x")).worker_concurrency == MIN_CONCURRENCY
    # 5,000 followers are 500 jobs x 10: all of them running, none queued.
    assert options_from_args(parse("--output", "x", "--followers", "1,5000")).concurrency == 500
    many = options_from_args(parse("--output", "x", "--followers", "900", "--per-job", "1"))
    assert many.worker_concurrency == 900
    told = parse("--output", "x", "--followers", "5000", "--worker-concurrency", "8")
    assert options_from_args(told).worker_concurrency == 8


def test_processes_option_is_for_a_started_server_only() -> None:
    assert options_from_args(parse("--output", "x", "--processes", "2")).processes == 2
    assert options_from_args(parse("--output", "x")).processes == 1
    with pytest.raises(SystemExit, match="--url"):
        options_from_args(parse("--output", "x", "--url", "http://h", "--processes", "2"))
    with pytest.raises(SystemExit, match="at least 1"):
        options_from_args(parse("--output", "x", "--processes", "0"))


def test_redis_options_are_for_a_started_server_and_a_cluster_needs_a_url() -> None:
    options = options_from_args(
        parse("--output", "x", "--redis-url", "redis://h:7000", "--redis-cluster",
              "--queue-shards", "3")
    )  # fmt: skip
    assert (options.redis_url, options.redis_cluster, options.queue_shards) == (
        "redis://h:7000", True, 3,
    )  # fmt: skip
    assert options_from_args(parse("--output", "x")).queue_shards == 1
    with pytest.raises(SystemExit, match="--redis-cluster needs --redis-url"):
        options_from_args(parse("--output", "x", "--redis-cluster"))
    with pytest.raises(SystemExit, match="not --url"):
        options_from_args(parse("--output", "x", "--url", "http://h", "--redis-url", "redis://h"))
    with pytest.raises(SystemExit, match="at least 1"):
        options_from_args(parse("--output", "x", "--queue-shards", "0"))


@pytest.mark.timeout(90)
def test_tiny_bench_on_a_redis_cluster_counts_its_commands(
    tmp_path: Path, cluster: LocalCluster
) -> None:
    args = parse(
        "--quick", "--output", str(tmp_path), "--repeat", "1", "--warmup", "0",
        "--rate", "200", "--first-token-ms", "50", "--modes", "sse", "--followers", "1,10",
        "--redis-url", cluster.url, "--redis-cluster", "--queue-shards", "3",
    )  # fmt: skip
    assert run(args) == 0

    results = json.loads((tmp_path / "results.json").read_text())
    sse = results["modes"]["sse"]
    assert sse["errors"] == 0 and sse["lost"] == 0 and sse["delivered_tokens"] > 0
    assert [r["errors"] for r in results["fanout"]["sse"]] == [0, 0]
    assert results["producing"]["redis_commands_per_appended_token"] > 0
    assert results["producing"]["redis_cpu_s"] is None  # not the benchmark's processes
    assert results["producing"]["duration_s"] < 10  # the baseline saw its job end (no watcher)
    # Each start had its own prefix on the cluster, and its jobs are left to expire.
    prefixes = set()
    for node in cluster.nodes:
        with node.client() as client:
            prefixes |= {k.decode().split(":")[0] for k in client.keys("bench-*")}
    assert len(prefixes) == len({s["scenario"]["server"]["rate"] for s in results["sweeps"]})


@pytest.mark.timeout(60)
async def test_started_server_runs_its_api_processes_and_counts_all_their_cpu() -> None:
    config = ServerConfig(rate=100, coalesce_ms=0, first_token_ms=50)
    async with started_system(config, worker_concurrency=4, processes=2) as system:
        assert system.server_pid is not None
        below = psutil.Process(system.server_pid).children()
        api = [p for p in below if "spawn_main" in " ".join(p.cmdline())]
        assert len(api) == 2
        async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as c:
            for _ in range(20):  # some work for every process to count
                assert (await c.get("/metrics")).status_code == 200
        own = cpu_seconds(system.server_pid) or 0.0
        counted = server_cpu_seconds(system.server_pid) or 0.0
        assert counted >= own + sum(cpu_seconds(p.pid) or 0.0 for p in api) - 0.05
        # serve's one worker process, told apart from the API processes.
        (worker,) = [p for p in below if p.cmdline()[1:4] == ["-m", "reviewstream", "worker"]]
        assert worker_cpu_seconds(system.server_pid) == pytest.approx(
            cpu_seconds(worker.pid) or 0.0, abs=0.05
        )
