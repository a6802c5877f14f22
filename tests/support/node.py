"""Node test folders (tests/node/<name>/, installed by ``scripts/test`` from their lock files)
run from a test: a script or vitest as a child process with a bounded run time, its output kept
for the failure message.

Missing packages are a failure, never a skip: CI installs them, and a skip would hide the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

NODE_TESTS = Path(__file__).resolve().parents[1] / "node"


@dataclass
class Run:
    """A finished Node process: its exit code and output."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def explain(self) -> str:
        """The command and its output, for a failure message."""
        return (
            f"$ {' '.join(self.args)}\n(exit {self.returncode})\n"
            f"----- stdout -----\n{self.stdout[-20_000:]}\n"
            f"----- stderr -----\n{self.stderr[-20_000:]}"
        )

    def json(self) -> Any:
        """The last line of stdout as JSON: what the tests' Node scripts print as their result."""
        lines = self.stdout.strip().splitlines()
        assert self.returncode == 0 and lines, self.explain()
        return json.loads(lines[-1])


def folder(name: str) -> Path:
    """tests/node/<name>/, failing (not skipping) when its packages are not installed."""
    path = NODE_TESTS / name
    if not (path / "node_modules").is_dir():
        pytest.fail(
            f"{path}/node_modules is missing: `bash scripts/test` installs it "
            f"(or `npm ci --prefix {path}`)"
        )
    return path


async def run(cwd: Path, args: list[str], env: dict[str, str], timeout: float) -> Run:
    """``node args...`` in ``cwd`` with ``env`` added to this environment; killed (its whole
    process group: vitest starts workers) after ``timeout`` seconds, which fails the test."""
    proc = await asyncio.create_subprocess_exec(
        "node", *args,
        cwd=cwd,
        env={**os.environ, **env, "NO_COLOR": "1"},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        _kill(proc)
        out, err = await proc.communicate()
        done = Run(["node", *args], -9, out.decode(errors="replace"), err.decode(errors="replace"))
        pytest.fail(f"node did not finish within {timeout:g} s\n{done.explain()}")
    except BaseException:  # the test was cancelled (its own timeout): take the children along
        _kill(proc)
        raise
    return Run(
        ["node", *args],
        proc.returncode if proc.returncode is not None else -1,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
    )


def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL to the child's process group (its own session: only what it started)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
