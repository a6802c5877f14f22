"""A real redis-server for the tests, on a free loopback port, with nothing saved to disk."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
from redis import Redis as SyncRedis

from reviewstream.processes.redis_server import redis_server_binary

from tests.support.servers import free_port


@contextlib.contextmanager
def redis_process() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A real redis-server on a free loopback port; yields the process and its URL."""
    binary = redis_server_binary()
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="rs-test-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = SyncRedis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            if client.ping():
                break
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"redis-server {binary} did not start")
            time.sleep(0.02)
    client.close()
    try:
        yield proc, f"redis://127.0.0.1:{port}/0"
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
