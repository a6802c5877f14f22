"""A local Redis Cluster for the tests: three masters, no replicas, on free loopback ports.

Started by the ``redis_cluster`` fixture (tests/conftest.py) only when a test asks for it. Each
master is a real ``redis-server --cluster-enabled yes``; the slots are split into three ranges
with ``CLUSTER ADDSLOTSRANGE`` and the nodes introduced with ``CLUSTER MEET`` (what ``redis-cli
--cluster create --cluster-replicas 0`` does), then the fixture waits for ``cluster_state:ok``.
``cluster-require-full-coverage no``: with one master down, the others keep serving their slots,
so a test can show what a client sees of a dead master's slot range and that the rest is fine.
Redis >= 7 is required (sharded pub/sub, ADDSLOTSRANGE): an older one is a failure, not a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from redis import Redis
from redis.crc import key_slot

from reviewstream.processes.redis_server import redis_server_binary, redis_server_version

from tests.support.servers import free_port

SLOTS = 16384
NODE_TIMEOUT_MS = 500  # how long before the others mark a dead master failed


def slot_ranges(n: int) -> list[tuple[int, int]]:
    """``n`` contiguous ranges covering every slot, as ``redis-cli --cluster create`` splits."""
    bounds = [SLOTS * i // n for i in range(n + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(n)]


@dataclass
class ClusterNode:
    """One master: its process, port and working directory (its nodes.conf survives restarts)."""

    binary: str
    port: int
    bus_port: int  # the cluster bus (by default port + 10000, which may not exist)
    workdir: str
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def name(self) -> str:
        """As redis-py names a cluster node: ``host:port``."""
        return f"127.0.0.1:{self.port}"

    def client(self) -> Redis:
        return Redis(port=self.port, socket_timeout=5)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-port", str(self.bus_port),
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             "--cluster-require-full-coverage", "no",
             "--save", "", "--appendonly", "no", "--dir", self.workdir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        with self.client() as client:
            while True:
                with contextlib.suppress(Exception):
                    if client.ping():
                        return
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"cluster node {self.name} did not start")
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no shutdown, connections reset, as a crashed or lost machine."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def info(self) -> dict[str, str]:
        with self.client() as client:
            text = client.execute_command("CLUSTER", "INFO")
        text = text.decode() if isinstance(text, bytes) else str(text)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)


class LocalCluster:
    """Three masters with a third of the slots each; see the module docstring."""

    def __init__(self, masters: int = 3) -> None:
        self.binary = redis_server_binary()
        version = redis_server_version(self.binary) or (0,)
        if version < (7,):
            raise RuntimeError(
                f"Redis Cluster tests need redis-server >= 7 (sharded pub/sub); {self.binary} is"
                f" {'.'.join(map(str, version))}: run scripts/test (it installs Debian's)"
            )
        self._root = tempfile.mkdtemp(prefix="rs-test-cluster-")
        self.nodes: list[ClusterNode] = []
        ports: set[int] = set()
        while len(ports) < 2 * masters:  # distinct: the kernel may hand out a port twice
            ports.add(free_port())
        listed = sorted(ports)
        for port, bus_port in zip(listed[::2], listed[1::2], strict=True):
            workdir = os.path.join(self._root, str(port))
            os.mkdir(workdir)
            self.nodes.append(ClusterNode(self.binary, port, bus_port, workdir))
        self.ranges = slot_ranges(masters)

    @property
    def url(self) -> str:
        """Any node names the cluster: the first."""
        return self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        for epoch, (node, (first, last)) in enumerate(zip(self.nodes, self.ranges, strict=True)):
            with node.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch + 1)
        with self.nodes[0].client() as client:
            for node in self.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
        self.wait_ok()

    def wait_ok(self, seconds: float = 20.0) -> None:
        """Until every node says ``cluster_state:ok`` and knows every other."""
        deadline = time.monotonic() + seconds
        while True:
            with contextlib.suppress(Exception):
                states = [node.info() for node in self.nodes]
                if all(
                    s.get("cluster_state") == "ok"
                    and s.get("cluster_known_nodes") == str(len(self.nodes))
                    and s.get("cluster_slots_ok") == str(SLOTS)
                    for s in states
                ):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("the local Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    def node_of(self, key: str) -> ClusterNode:
        """The master serving ``key``'s slot now."""
        return self.serving(key_slot(key.encode()))

    def serving(self, slot: int) -> ClusterNode:
        """The master serving ``slot`` now (as the first master says)."""
        with self.nodes[0].client() as client:
            for first, last, *serving in client.execute_command("CLUSTER", "SLOTS"):
                if first <= slot <= last:
                    port = int(serving[0][1])
                    return next(node for node in self.nodes if node.port == port)
        raise LookupError(slot)

    def node_id(self, node: ClusterNode) -> str:
        with node.client() as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())

    def move_slot(self, slot: int, target: ClusterNode) -> None:
        """Move one slot (holding no keys) to ``target``, as a resharding does."""
        source = self.serving(slot)
        target_id, source_id = self.node_id(target), self.node_id(source)
        with target.client() as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        with source.client() as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            assert not client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10)
        for node in [
            target,
            source,
            *(n for n in self.nodes if n.port not in (target.port, source.port)),
        ]:
            with node.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def heal(self) -> None:
        """Every master back up, the cluster ok, every database empty: a fresh start per test."""
        for node in self.nodes:
            if not node.alive:
                node.start()
        self.wait_ok()
        for node in self.nodes:
            with node.client() as client:
                client.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
                node.process.wait(10)
        shutil.rmtree(self._root, ignore_errors=True)
