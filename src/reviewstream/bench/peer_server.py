"""The peer of ``reviewstream bench --peer durable-streams``: the Durable Streams protocol's
Node reference server (npm ``@durable-streams/server``), in memory, on loopback.

The benchmark installs the package from npm when asked, into a cache directory of its own
(``~/.cache/reviewstream/peers`` or ``--peer-dir``), never into the project, and pins a version
(``--peer-version``) so that a re-run measures the same server. The package has no command of
its own: the benchmark writes a few lines of JavaScript beside it that start a
``DurableStreamTestServer`` (its in-memory store, its defaults otherwise: 30 s long-poll
timeout, compression only for clients that ask — the benchmark's client does not) on a free
loopback port, and stops it on SIGTERM. The Node process is started like ``reviewstream serve``
is (``PR_SET_PDEATHSIG``, a private working directory, its output kept as a log), so its CPU
time is read the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from .server import System, copy_log, free_port, log_tail, start_process, stop_process

NAME = "durable-streams"
PACKAGE = "@durable-streams/server"
DEFAULT_VERSION = "0.3.7"
INSTALL_SECONDS = 300.0
LAUNCHER_NAME = "launch-durable-streams.mjs"
LAUNCHER = """\
// Written by reviewstream bench: start the Durable Streams reference server, in memory.
import { DurableStreamTestServer } from "@durable-streams/server";

const port = Number(process.argv[2]);
const server = new DurableStreamTestServer({ port, host: "127.0.0.1" });
const url = await server.start();
console.log(JSON.stringify({ url, node: process.version }));
process.on("SIGTERM", () => {
  server.stop().finally(() => process.exit(0));
});
"""

Progress = Callable[[str], None]


class PeerUnavailable(Exception):
    """The peer cannot be installed or started; the message says what is missing, in a line."""


@dataclass(frozen=True, slots=True)
class PeerInstall:
    """Where the peer is installed and which version is there."""

    directory: Path
    version: str
    node: str


def default_peer_dir() -> Path:
    """``$XDG_CACHE_HOME/reviewstream/peers`` (``~/.cache/reviewstream/peers``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "reviewstream" / "peers"


def installed_version(peer_dir: Path) -> str | None:
    """The version of the package installed in ``peer_dir``, if any."""
    manifest = peer_dir / "node_modules" / PACKAGE / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def missing_tools(peer_dir: Path, version: str) -> list[str]:
    """The programs the peer needs that are not on ``PATH``: ``node`` always, ``npm`` unless
    ``version`` is installed already."""
    missing = [] if shutil.which("node") else ["node"]
    if installed_version(peer_dir) != version and not shutil.which("npm"):
        missing.append("npm")
    return missing


def missing_message(missing: list[str], version: str) -> str:
    """The one line that says what to install."""
    return (
        f"reviewstream bench --peer {NAME} needs Node.js 18+ and npm on PATH to install and run "
        f"{PACKAGE}@{version}; not found: {', '.join(missing)}"
    )


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def write_launcher(peer_dir: Path) -> Path:
    """Write the script that starts the server beside the installed package."""
    path = peer_dir / LAUNCHER_NAME
    path.write_text(LAUNCHER)
    return path


async def _run(argv: list[str], cwd: Path, seconds: float) -> tuple[int, str]:
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


async def ensure_installed(
    peer_dir: Path, version: str, progress: Progress | None = None
) -> PeerInstall:
    """Install ``PACKAGE@version`` into ``peer_dir`` unless it is there already."""
    missing = missing_tools(peer_dir, version)
    if missing:
        raise PeerUnavailable(missing_message(missing, version))
    _make_dir(peer_dir)
    if installed_version(peer_dir) != version:
        if progress is not None:
            progress(f"installing {PACKAGE}@{version} from npm into {peer_dir}")
        argv = [
            "npm", "install", "--prefix", str(peer_dir), "--save-exact", "--no-audit",
            "--no-fund", "--loglevel=error", f"{PACKAGE}@{version}",
        ]  # fmt: skip
        code, out = await _run(argv, peer_dir, INSTALL_SECONDS)
        if code != 0 or installed_version(peer_dir) != version:
            tail = " | ".join(out.strip().splitlines()[-3:])
            raise PeerUnavailable(f"npm could not install {PACKAGE}@{version}: {tail}")
    code, out = await _run(["node", "--version"], peer_dir, 30)
    if code != 0:
        raise PeerUnavailable(f"node --version failed: {out.strip()[:200]}")
    write_launcher(peer_dir)
    return PeerInstall(peer_dir, version, out.strip())


async def _wait_listening(
    host: str, port: int, process: asyncio.subprocess.Process, log: Path, seconds: float
) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if process.returncode is not None:
            code = process.returncode
            raise PeerUnavailable(f"the {NAME} server exited with {code}: {log_tail(log)}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        await asyncio.sleep(0.05)
    raise PeerUnavailable(f"the {NAME} server did not listen within {seconds:g} s: {log_tail(log)}")


@contextlib.asynccontextmanager
async def started_peer(install: PeerInstall, keep_log: Path | None = None) -> AsyncIterator[System]:
    """The reference server, fresh and empty, on a free loopback port; stopped on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="reviewstream-peer-"))
    log = workdir / "peer.log"
    process: asyncio.subprocess.Process | None = None
    try:
        port = free_port()
        launcher = str(install.directory / LAUNCHER_NAME)
        env = {k: v for k, v in os.environ.items() if not k.startswith("NODE_")}
        process = await start_process(["node", launcher, str(port)], env, str(workdir), log)
        await _wait_listening("127.0.0.1", port, process, log, 30)
        yield System(f"http://127.0.0.1:{port}", server_pid=process.pid, log_path=log)
    finally:
        if process is not None:
            await stop_process(process, 5)
        if keep_log is not None:
            copy_log(log, keep_log)
        shutil.rmtree(workdir, ignore_errors=True)
