"""The idle-connection memory probe: what one open SSE or WebSocket connection costs the server.

For each kind, a fresh server whose simulated model waits ten minutes before its first token
(so the job never produces during the probe) gets a warm-up batch of connections, then ``n``
more; the growth of its resident set between the two, divided by ``n``, is the cost of one idle
connection. A fresh server per kind keeps memory freed by one kind from hiding the other's
cost. Connections open in batches, like a reconnect storm after a deploy, and their connect
times are reported too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from .conn import Endpoint, HttpConnection, WebSocketConnection
from .plan import ServerConfig
from .runner import job_body
from .server import cpu_seconds, rss_bytes, started_system
from .stats import quantile

NEVER_MS = 600_000.0
Progress = Callable[[str], None]
Closer = Callable[[], None]


async def _open_sse(endpoint: Endpoint, job_id: str) -> Closer:
    conn = await HttpConnection.open(endpoint)
    response = conn.request(
        "GET",
        f"/jobs/{job_id}/events",
        headers={"Accept": "text/event-stream"},
        on_body=lambda data, now: None,
    )
    status = await response.headers
    if status != 200:
        conn.close()
        raise ConnectionError(f"SSE answered {status}")
    return conn.close


async def _open_ws(endpoint: Endpoint, job_id: str) -> Closer:
    conn = await WebSocketConnection.open(endpoint, f"/jobs/{job_id}/ws", lambda data, now: None)
    return conn.close


async def _settled_rss(pid: int) -> int:
    """The server's RSS once it stopped moving (allocation after a burst takes a moment)."""
    last = -1
    for _ in range(10):
        await asyncio.sleep(0.5)
        now = rss_bytes(pid) or 0
        if abs(now - last) < 64 * 1024:
            return now
        last = now
    return last


async def _open_many(
    opener: Callable[[Endpoint, str], Any],
    endpoint: Endpoint,
    job_id: str,
    n: int,
    closers: list[Closer],
    connect_ms: list[float],
    errors: list[str],
    batch: int = 100,
) -> None:
    async def one() -> None:
        started = time.monotonic()
        try:
            closers.append(await opener(endpoint, job_id))
            connect_ms.append((time.monotonic() - started) * 1000)
        except (OSError, ValueError) as e:
            errors.append(f"{type(e).__name__}: {e}")

    for start in range(0, n, batch):
        await asyncio.gather(*(one() for _ in range(min(batch, n - start))))


async def probe(
    kind: str, connections: int, *, warm: int = 100, progress: Progress | None = None
) -> dict[str, Any]:
    """Open ``connections`` idle ``kind`` ("sse" or "websocket") connections; server RSS each."""
    opener = _open_sse if kind == "sse" else _open_ws
    config = ServerConfig(rate=20, coalesce_ms=0, first_token_ms=NEVER_MS)
    closers: list[Closer] = []
    connect_ms: list[float] = []
    errors: list[str] = []
    async with started_system(config, graceful_seconds=1) as system:
        if (pid := system.server_pid) is None:
            raise RuntimeError("the memory probe needs a server the benchmark started")
        endpoint = Endpoint.from_url(system.base_url)
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
            response = await client.post("/jobs", json=job_body(50))
            response.raise_for_status()
            job_id = str(response.json()["id"])
        try:
            await _open_many(opener, endpoint, job_id, warm, closers, [], errors)
            rss_before = await _settled_rss(pid)
            cpu_before = cpu_seconds(pid) or 0.0
            await _open_many(opener, endpoint, job_id, connections, closers, connect_ms, errors)
            cpu_burst = (cpu_seconds(pid) or 0.0) - cpu_before
            rss_after = await _settled_rss(pid)
            if progress is not None:
                progress(f"{len(closers)} idle {kind} connections open")
        finally:
            for close in closers:
                close()
            await asyncio.sleep(0.2)
    opened = len(connect_ms)
    ordered = sorted(connect_ms)
    per_conn = (rss_after - rss_before) / opened if opened else None
    return {
        "connections": opened,
        "warm_up_connections": warm,
        "errors": len(errors),
        "error_messages": sorted(set(errors))[:5],
        "rss_before_mb": rss_before / 2**20,
        "rss_after_mb": rss_after / 2**20,
        "bytes_per_connection": per_conn,
        "kb_per_connection": per_conn / 1024 if per_conn is not None else None,
        "connect_ms_p50": quantile(ordered, 0.5) if ordered else None,
        "connect_ms_p99": quantile(ordered, 0.99) if ordered else None,
        "connect_ms_max": ordered[-1] if ordered else None,
        "server_cpu_ms_per_connect": 1000 * cpu_burst / opened if opened else None,
    }


async def probe_all(connections: int, progress: Progress | None = None) -> dict[str, Any]:
    """The probe for SSE and for WebSocket."""
    results: dict[str, Any] = {}
    for kind in ("sse", "websocket"):
        results[kind] = await probe(kind, connections, progress=progress)
    return results
