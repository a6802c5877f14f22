"""The jobs on Redis, the single source of truth.

One module per concern:

- ``jobs``: ``JobStore``, a job's own keys — meta, tokens, their times, its channel;
- ``queue``: ``JobQueue``, the worker queue's shards and the leases of running attempts;
- ``workers``: ``WorkerRegistry``, the workers' heartbeats and the shared stream-token secret;
- ``streams``: ``StreamStore``, Durable Streams written by others, on a job's key layout;
- ``lifecycle``: ``Store``, the three parts together, and the transitions that take a job
  through the queue (create, claim, renew, requeue, end, cancel, retire), each two single-slot
  steps ordered so that a cut between them is repaired;
- ``types``: what they hand each other and their callers (``Snapshot``, ``Attempts``,
  ``QueueEntry``, ``Lease``, ``Claim``, ``Append``);
- ``scripts``: the Lua they run, one module per area, each script's reply an enum beside it;
- ``notices``: what a job's channel carries — the Lua that writes it and the parser;
- ``boundary``: ``redis_errors`` (Redis failures as ``StoreError``), ``Script``, and ``Lane``
  (a pool connection held by one sequential user).

The key names are ``reviewstream.keys``'s.
"""

from .boundary import REDIS_FAILURES, Lane, Script, redis_errors
from .jobs import MAX_APPEND_BATCH, JobStore, appended, new_job_id, text_digest
from .lifecycle import Store, spent_error
from .queue import JobQueue
from .scripts.jobs import Renewal, Requeue
from .streams import Producer, StreamMeta, StreamStore, Written, stream_id
from .types import Append, Attempts, Claim, Lease, QueueEntry, Snapshot
from .workers import WorkerRegistry

__all__ = [
    "MAX_APPEND_BATCH",
    "REDIS_FAILURES",
    "Append",
    "Attempts",
    "Claim",
    "JobQueue",
    "JobStore",
    "Lane",
    "Lease",
    "QueueEntry",
    "Renewal",
    "Requeue",
    "Script",
    "Producer",
    "Snapshot",
    "Store",
    "StreamMeta",
    "StreamStore",
    "WorkerRegistry",
    "Written",
    "appended",
    "new_job_id",
    "redis_errors",
    "spent_error",
    "stream_id",
    "text_digest",
]
