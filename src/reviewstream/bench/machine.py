"""What the benchmark ran on: enough to judge whether two results can be compared."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "reviewstream", "fastapi", "starlette", "uvicorn", "sse-starlette", "redis", "hiredis",
    "uvloop", "httptools", "websockets",
)  # fmt: skip


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _memory_gb() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def source_fingerprint() -> str:
    """A hash of the server's source (the package without the benchmark): in a shared working
    tree, comparing it before and after a run shows whether the server changed under it."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha1()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] != "bench":
            digest.update(str(relative).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def describe(redis_version: str | None = None) -> dict[str, Any]:
    """The machine, OS, Python, Redis and package versions, the commit and the time."""
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "redis_server": redis_version,
        "packages": versions,
        "commit": _git_commit(),
        "source_fingerprint": source_fingerprint(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
