"""``reviewstream bench``: the four delivery modes compared on the same jobs.

The benchmark starts its own redis-server and ``reviewstream serve`` (or targets a running server
by URL), creates jobs on the simulated provider, follows them with lean clients of each mode and
measures what each client sees (time to first token, per-token delivery latency against the
server's append time, end-to-end time, requests and bytes per job, lost or duplicated tokens)
and what the server pays (CPU seconds and Redis commands per token, memory per idle connection).

Modules, one purpose each:

- ``conn``: lean HTTP/1.1 and WebSocket client connections (stamp arrivals, count bytes).
- ``followers``: one follower per mode, recording into a ``Trace``.
- ``plan``: options and the list of scenarios they expand to.
- ``server``: the system under test (processes, CPU, memory, Redis command counts).
- ``runner``: one run of one scenario.
- ``stats``: percentiles, per-mode summaries, medians over repetitions.
- ``memory``: the idle-connection memory probe.
- ``machine``: what the benchmark ran on.
- ``report``: the table, ``results.json`` and the chart.
- ``cli``: the command line and the orchestration.

Research that runs the same loads elsewhere (side by side with peer servers, disruptions,
profiles) lives beside the package, in ``benchmarks/``, and builds on these modules.
"""

from __future__ import annotations
