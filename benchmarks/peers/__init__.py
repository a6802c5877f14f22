"""The peers of the side-by-side (``side_by_side.py``): other servers that deliver the same jobs,
one module each (``durable_streams``, ``resumable_stream``), and what they share: the ``Peer`` a
module provides, the result of a run on one, and Node servers installed from npm.

A Node peer is installed when asked, into a cache directory of the benchmark's own
(``~/.cache/reviewstream/peers``, or ``--peer-dir``), never into the project, at a pinned version
(``--peer-version``) so that a re-run measures the same server. Its module writes a few lines of
JavaScript beside the package (``LAUNCHER``) that start the server on a port given as the first
argument and stop it on SIGTERM. The Node process is started as ``reviewstream serve`` is
(``reviewstream.bench.server.start_process``: it dies with the benchmark, a private working
directory, its output kept as a log), so its CPU time is read the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from reviewstream.bench.plan import Scenario
from reviewstream.bench.runner import RunResult
from reviewstream.bench.server import (
    RedisProcess,
    System,
    copy_log,
    free_port,
    log_tail,
    start_process,
    stop_process,
)

Progress = Callable[[str], None]
INSTALL_SECONDS = 300.0


class PeerUnavailable(Exception):
    """The peer cannot be installed or started; the message says what is missing, in a line."""


@dataclass(frozen=True, slots=True)
class Install:
    """Where a peer is installed, which version is there, and the runtime that runs it."""

    directory: Path
    version: str
    runtime: str


@dataclass
class PeerRun(RunResult):
    """A run on a peer; ``append_ms``: each append's round trip, when the benchmark produces."""

    append_ms: list[float] = field(default_factory=list)


class Peer(Protocol):
    """What a peer module provides to the side-by-side."""

    NAME: str  # its ``--peer`` name
    PACKAGE: str
    DEFAULT_VERSION: str
    MODES: tuple[str, ...]  # the delivery modes it is compared in
    NOTES: tuple[str, ...]  # how its figures are taken, where that differs from reviewstream's

    def missing_tools(self, directory: Path, version: str) -> list[str]: ...

    def missing_message(self, missing: list[str], version: str) -> str: ...

    async def ensure_installed(
        self, directory: Path, version: str, progress: Progress | None = None
    ) -> Install: ...

    def started(
        self, install: Install, keep_log: Path | None = None
    ) -> AbstractAsyncContextManager[System]: ...

    def describe(self, install: Install) -> dict[str, Any]: ...

    def title(self, described: dict[str, Any]) -> str: ...

    async def run_load(
        self,
        scenario: Scenario,
        system: System,
        tokens: list[str],
        *,
        tag: str,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> PeerRun: ...


def default_dir() -> Path:
    """``$XDG_CACHE_HOME/reviewstream/peers`` (``~/.cache/reviewstream/peers``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "reviewstream" / "peers"


@dataclass(frozen=True, slots=True)
class NodePackage:
    """A peer that is an npm package run by Node, started by ``launcher`` (JavaScript).

    ``extras``: other packages it needs, installed beside it at pinned versions (``"name@1.2.3"``);
    ``redis``: it runs on a private redis-server of its own (``RedisProcess``, as reviewstream's
    benchmark starts one), whose unix socket is the launcher's second argument.
    """

    name: str  # the peer's ``--peer`` name
    package: str
    launcher: str
    extras: tuple[str, ...] = ()
    redis: bool = False

    @property
    def launcher_name(self) -> str:
        return f"launch-{self.name}.mjs"

    def installed_version(self, directory: Path, package: str | None = None) -> str | None:
        """The version of the package (or of ``package``) installed in ``directory``, if any."""
        manifest = directory / "node_modules" / (package or self.package) / "package.json"
        try:
            return str(json.loads(manifest.read_text())["version"])
        except (OSError, ValueError, KeyError):
            return None

    def missing_tools(self, directory: Path, version: str) -> list[str]:
        """The programs the peer needs that are not on ``PATH``: ``node`` always, ``npm``
        unless ``version`` is installed already."""
        missing = [] if shutil.which("node") else ["node"]
        if not self.is_installed(directory, version) and not shutil.which("npm"):
            missing.append("npm")
        return missing

    def is_installed(self, directory: Path, version: str) -> bool:
        """Whether ``version`` and the pinned extras are installed in ``directory``."""
        pins = [(self.package, version), *(e.rsplit("@", 1) for e in self.extras)]
        return all(self.installed_version(directory, name) == pin for name, pin in pins)

    def missing_message(self, missing: list[str], version: str) -> str:
        """The one line that says what to install."""
        return (
            f"benchmarks/side_by_side.py --peer {self.name} needs Node.js 18+ and npm on PATH to"
            f" install and run {self.package}@{version}; not found: {', '.join(missing)}"
        )

    async def ensure_installed(
        self, directory: Path, version: str, progress: Progress | None = None
    ) -> Install:
        """Install ``package@version`` into ``directory`` unless it is there already."""
        missing = self.missing_tools(directory, version)
        if missing:
            raise PeerUnavailable(self.missing_message(missing, version))
        _make_dir(directory)
        if not self.is_installed(directory, version):
            wanted = [f"{self.package}@{version}", *self.extras]
            if progress is not None:
                progress(f"installing {' '.join(wanted)} from npm into {directory}")
            argv = [
                "npm", "install", "--prefix", str(directory), "--save-exact", "--no-audit",
                "--no-fund", "--loglevel=error", *wanted,
            ]  # fmt: skip
            code, out = await _output(argv, directory, INSTALL_SECONDS)
            if code != 0 or not self.is_installed(directory, version):
                tail = " | ".join(out.strip().splitlines()[-3:])
                raise PeerUnavailable(f"npm could not install {self.package}@{version}: {tail}")
        code, out = await _output(["node", "--version"], directory, 30)
        if code != 0:
            raise PeerUnavailable(f"node --version failed: {out.strip()[:200]}")
        self.write_launcher(directory)
        return Install(directory, version, out.strip())

    def write_launcher(self, directory: Path) -> None:
        """Write the script that starts the server beside the installed package."""
        (directory / self.launcher_name).write_text(self.launcher)

    @contextlib.asynccontextmanager
    async def started(
        self, install: Install, keep_log: Path | None = None
    ) -> AsyncIterator[System]:
        """The server, fresh and empty, on a free loopback port; stopped on exit."""
        workdir = Path(tempfile.mkdtemp(prefix="reviewstream-peer-"))
        log = workdir / "peer.log"
        process: asyncio.subprocess.Process | None = None
        redis = RedisProcess(workdir) if self.redis else None
        try:
            port = free_port()
            argv = ["node", str(install.directory / self.launcher_name), str(port)]
            if redis is not None:
                await redis.start()
                argv.append(redis.socket)
            env = {k: v for k, v in os.environ.items() if not k.startswith("NODE_")}
            process = await start_process(argv, env, str(workdir), log)
            await self._listening("127.0.0.1", port, process, log, 30)
            yield System(f"http://127.0.0.1:{port}", server_pid=process.pid, redis=redis)
        finally:
            if process is not None:
                await stop_process(process, 5)
            if redis is not None:
                await redis.aclose()
            if keep_log is not None:
                copy_log(log, keep_log)
            shutil.rmtree(workdir, ignore_errors=True)

    async def _listening(
        self, host: str, port: int, process: asyncio.subprocess.Process, log: Path, seconds: float
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            if process.returncode is not None:
                code = process.returncode
                raise PeerUnavailable(f"the {self.name} server exited with {code}: {log_tail(log)}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection(host, port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return
            await asyncio.sleep(0.05)
        raise PeerUnavailable(
            f"the {self.name} server did not listen within {seconds:g} s: {log_tail(log)}"
        )


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


async def _output(argv: list[str], cwd: Path, seconds: float) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=str(cwd),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(seconds):
            out, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        return -1, f"{argv[0]} took longer than {seconds:g} s"
    return process.returncode or 0, out.decode(errors="replace")
