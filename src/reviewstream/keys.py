"""Redis key and channel names, in one place.

Every key of job J carries the hash tag ``{J}`` so that a job's keys sit in one Redis Cluster
slot and one script can change them together. A tenant's quota keys share ``{t:NAME}``. The
worker queue and the lease index are partitioned into ``queue_shards`` shards
(``REVIEWSTREAM_QUEUE_SHARDS``), shard N's two keys sharing ``{qN}``; a job is placed on one at
creation (its meta keeps the number). The worker heartbeats and the token secret are single keys.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

WORKER_GROUP = "workers"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix (``REVIEWSTREAM_KEY_PREFIX``), with ``queue_shards`` shards."""

    prefix: str = "rs"
    queue_shards: int = 1

    def __post_init__(self) -> None:
        if self.queue_shards < 1:
            raise ValueError("queue_shards must be at least 1")

    def meta(self, job_id: str) -> str:
        return f"{self.prefix}:{{{job_id}}}:meta"

    def chunks(self, job_id: str) -> str:
        return f"{self.prefix}:{{{job_id}}}:chunks"

    def times(self, job_id: str) -> str:
        """Append time of each chunk (seconds since the epoch, Redis clock), index-aligned."""
        return f"{self.prefix}:{{{job_id}}}:times"

    def channel(self, job_id: str) -> str:
        return f"{self.prefix}:{{{job_id}}}:events"

    def ends(self, job_id: str) -> str:
        """The job's end only (the END script announces on both): what a worker listens to for
        the jobs it runs, which never needs their tokens."""
        return f"{self.prefix}:{{{job_id}}}:ends"

    def job_id_of_channel(self, channel: str) -> str:
        """The job of a ``channel`` or an ``ends`` channel."""
        return channel[len(self.prefix) + 2 : channel.rindex("}:")]

    @property
    def shards(self) -> range:
        return range(self.queue_shards)

    def shard_of(self, job_id: str) -> int:
        """The shard a new job is placed on: spread by its id (stable, any process agrees)."""
        return zlib.crc32(job_id.encode()) % self.queue_shards

    def queue(self, shard: int) -> str:
        """Stream (consumer group ``workers``): entries ``job``, ``attempt`` (the attempt the
        job had when it entered the queue: 0 when created, N when attempt N was lost) and, for a
        lost attempt, ``cause``."""
        return f"{self.prefix}:{{q{shard}}}:queue"

    def leases(self, shard: int) -> str:
        """Sorted set: ``job#attempt`` -> the attempt's lease deadline (ms, Redis clock)."""
        return f"{self.prefix}:{{q{shard}}}:leases"

    @property
    def workers(self) -> str:
        """Sorted set: worker name -> its last heartbeat (ms, Redis clock)."""
        return f"{self.prefix}:workers"

    @property
    def token_secret(self) -> str:
        """The stream-token signing secret, when none is configured."""
        return f"{self.prefix}:token-secret"

    def tenant_active(self, tenant: str) -> str:
        """Sorted set: the tenant's queued and running jobs (by creation time, ms)."""
        return f"{self.prefix}:{{t:{tenant}}}:active"

    def tenant_streams(self, tenant: str) -> str:
        """Hash: process -> "count:deadline_ms", the tenant's open streams in each process."""
        return f"{self.prefix}:{{t:{tenant}}}:streams"

    def tenant_starts(self, tenant: str) -> str:
        """Sorted set: the tenant's jobs created in the last minute (by creation time, ms)."""
        return f"{self.prefix}:{{t:{tenant}}}:starts"

    def tenant_open_streams(self, tenant: str) -> str:
        """Sorted set: the streams the tenant created at /v1/stream/ that are counted open."""
        return f"{self.prefix}:{{t:{tenant}}}:open-streams"

    def tenant_stream_starts(self, tenant: str) -> str:
        """Sorted set: the tenant's stream creations in the last minute (by time, ms)."""
        return f"{self.prefix}:{{t:{tenant}}}:stream-starts"
