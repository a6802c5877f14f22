"""Redis key and channel names, in one place.

Every key of job J carries the hash tag ``{J}`` so that a job's keys sit in one Redis Cluster
slot and one script can change them together. The queue and the lease index are global.
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
