"""What to run: the benchmark's options and the scenarios they expand to.

A scenario is one configuration of the system under test (token rate, coalescing window, time to
first token: these need a server restart) plus one load (which modes follow, how many jobs, how
many followers per job, the short-poll interval). Scenarios come in three kinds:

- ``together``: every mode follows the same jobs at once (the fair side-by-side comparison);
- ``alone``: one mode at a time, so the server's CPU and Redis commands can be put down to it;
- ``baseline``: the same jobs with nobody following, to subtract the cost of producing them.

The plan, in order: the headline at ``rate`` (1 follower per mode, together and alone, then the
other short-poll intervals), the coalescing windows, then the fan-out sweep at ``fanout_rate``
(``followers`` per mode, each mode alone, ``per_job`` followers per job: 1,000 followers are
100 jobs x 10).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["baseline", "together", "alone"]
MIN_CONCURRENCY = 256


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The settings of the server under test that only a restart changes."""

    rate: float
    coalesce_ms: float
    first_token_ms: float

    @property
    def label(self) -> str:
        return f"{self.rate:g} tok/s, coalesce {self.coalesce_ms:g} ms"


@dataclass(frozen=True, slots=True)
class Scenario:
    """One load on one server configuration."""

    group: str
    kind: Kind
    server: ServerConfig
    modes: tuple[str, ...]
    jobs: int
    per_job: int
    poll_interval: float
    length_words: int

    @property
    def followers(self) -> int:
        """Followers per mode."""
        return self.jobs * self.per_job if self.kind != "baseline" else 0

    @property
    def label(self) -> str:
        who = {
            "baseline": "no followers",
            "together": "all modes together",
            "alone": "+".join(self.modes) + " alone",
        }[self.kind]
        poll = f", poll {self.poll_interval:g} s" if "short_poll" in self.modes else ""
        return (
            f"{self.group}: {who}, {self.followers} followers/mode ({self.jobs} jobs), "
            f"{self.server.label}{poll}"
        )


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """Everything the command line decides."""

    output: Path
    url: str | None = None
    quick: bool = False
    rate: float = 50.0
    fanout_rate: float = 20.0
    followers: tuple[int, ...] = (1, 10, 100, 1000)
    per_job: int = 10
    repeat: int = 3
    warmup: int = 1
    modes: tuple[str, ...] = ("short_poll", "long_poll", "sse", "websocket")
    poll_intervals: tuple[float, ...] = (0.25, 1.0, 2.0)
    fanout_poll_interval: float = 1.0
    coalesce_ms: tuple[float, ...] = (0.0, 50.0)
    length_words: int = 100
    first_token_ms: float = 1000.0
    worker_concurrency: int | None = None  # None: ``every_job_at_once``
    processes: int = 1  # API processes of a started server (serve --processes)
    # A Redis (Cluster) for the started server instead of a private redis-server.
    redis_url: str | None = None
    redis_cluster: bool = False
    queue_shards: int = 1  # REVIEWSTREAM_QUEUE_SHARDS of a started server
    memory: bool = False
    memory_connections: int = 2000

    @property
    def concurrency(self) -> int:
        """A started server's worker concurrency: as given, else ``every_job_at_once``."""
        return self.worker_concurrency or every_job_at_once(self)


def split_load(n: int, per_job: int) -> tuple[int, int]:
    """(jobs, followers per job) for ``n`` followers per mode."""
    per = max(1, min(n, per_job))
    return max(1, n // per), per


def every_job_at_once(o: BenchOptions) -> int:
    """The worker concurrency at which every job of the largest load produces at once (a
    follower count then means followers receiving tokens, none of them waiting in the queue),
    and never below ``MIN_CONCURRENCY``."""
    return max(MIN_CONCURRENCY, *(split_load(n, o.per_job)[0] for n in o.followers))


def build_plan(o: BenchOptions) -> list[Scenario]:
    """The scenarios to run, grouped by server configuration, each once (no duplicates)."""
    plain = 0.0 if 0.0 in o.coalesce_ms else o.coalesce_ms[0]
    windows = [c for c in o.coalesce_ms if c != plain]
    interval = o.poll_intervals[0]
    head = ServerConfig(o.rate, plain, o.first_token_ms)
    words = o.length_words

    def make(
        group: str, kind: Kind, server: ServerConfig, modes: Iterable[str], n: int, poll: float
    ) -> Scenario:
        jobs, per = split_load(n, o.per_job)
        if kind == "baseline":
            per = 0  # the same jobs, nobody following
        return Scenario(group, kind, server, tuple(modes), jobs, per, poll, words)

    plan = [make("headline", "baseline", head, (), 1, interval)]
    if len(o.modes) > 1:
        plan.append(make("headline", "together", head, o.modes, 1, interval))
    plan += [make("headline", "alone", head, (m,), 1, interval) for m in o.modes]
    if "short_poll" in o.modes:
        plan += [
            make("interval", "alone", head, ("short_poll",), 1, i) for i in o.poll_intervals[1:]
        ]
    for window in windows:
        server = ServerConfig(o.rate, window, o.first_token_ms)
        plan.append(make("coalesce", "together", server, o.modes, 1, interval))
    fan = ServerConfig(o.fanout_rate, plain, o.first_token_ms)
    for n in o.followers:
        plan.append(make("fanout", "baseline", fan, (), n, o.fanout_poll_interval))
        plan += [make("fanout", "alone", fan, (m,), n, o.fanout_poll_interval) for m in o.modes]
    live = [m for m in o.modes if m != "short_poll"]  # short polls read the list: no window
    if live and o.followers and max(o.followers) > 1:
        for window in windows:
            server = ServerConfig(o.fanout_rate, window, o.first_token_ms)
            n = max(o.followers)
            plan.append(make("coalesce", "baseline", server, (), n, o.fanout_poll_interval))
            plan += [
                make("coalesce", "alone", server, (m,), n, o.fanout_poll_interval) for m in live
            ]
    return _by_server(_unique(plan))


def _unique(plan: list[Scenario]) -> list[Scenario]:
    """Each load once, in the order first met (the interval tells short polls apart only)."""
    kept: dict[tuple[object, ...], Scenario] = {}
    for s in plan:
        poll = s.poll_interval if "short_poll" in s.modes else None
        kept.setdefault((s.kind, s.server, s.modes, s.jobs, s.per_job, poll), s)
    return list(kept.values())


def _by_server(plan: list[Scenario]) -> list[Scenario]:
    order: dict[ServerConfig, int] = {}
    for s in plan:
        order.setdefault(s.server, len(order))
    return sorted(plan, key=lambda s: order[s.server])  # stable: keeps order within a server


def baseline_for(plan: Iterable[Scenario], scenario: Scenario) -> Scenario | None:
    """The baseline run with the same server and jobs as ``scenario``, if the plan has one."""
    for s in plan:
        if s.kind == "baseline" and s.server == scenario.server and s.jobs == scenario.jobs:
            return s
    return None
