"""Redis key and channel names, in one place.

Every key of job J carries the hash tag ``{J}`` so that a job's keys sit in one Redis Cluster
slot and one script can change them together. A tenant's quota keys share ``{t:NAME}``. The
queue, the lease index and the worker heartbeats are global.
"""

from __future__ import annotations

from dataclasses import dataclass

WORKER_GROUP = "workers"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix (``REVIEWSTREAM_KEY_PREFIX``)."""

    prefix: str = "rs"

    def meta(self, job_id: str) -> str:
        return f"{self.prefix}:{{{job_id}}}:meta"

    def chunks(self, job_id: str) -> str:
        return f"{self.prefix}:{{{job_id}}}:chunks"

    def times(self, job_id: str) -> str:
        """Append time of each chunk (seconds since the epoch, Redis clock), index-aligned."""
        return f"{self.prefix}:{{{job_id}}}:times"

    def channel(self, job_id: str) -> str:
        return f"{self.prefix}:{{{job_id}}}:events"

    def job_id_of_channel(self, channel: str) -> str:
        return channel[len(self.prefix) + 2 : -len("}:events")]

    @property
    def queue(self) -> str:
        return f"{self.prefix}:queue"

    @property
    def leases(self) -> str:
        return f"{self.prefix}:leases"

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
